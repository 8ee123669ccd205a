"""Request and result types: the only part of the serving core that callers need to know.

A :class:`Request` names a model, carries a prompt (a string or a list of segments ordered from
the most shared to the least shared), sampling settings and an optional output constraint. The
serving core answers each request with a :class:`Result`. Nothing here knows about worlds or
personas.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_ids = itertools.count()


class SamplingParams(BaseModel):
    """How the next token is chosen.

    ``temperature == 0`` is greedy decoding. ``seed`` makes sampling reproducible per request:
    the same request gives the same tokens whatever else shares its batch.
    """

    model_config = ConfigDict(frozen=True)

    max_tokens: int = Field(32, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0.0, le=10.0)
    top_k: int = Field(0, ge=0, description="0 disables top-k filtering")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: tuple[str, ...] = ()
    seed: int = 0
    ignore_eos: bool = False
    no_repeat_ngram_size: int = Field(
        0, ge=0, le=16, description="n > 0: never repeat an n-gram of the prompt and output (as transformers)"
    )


class Constraint(BaseModel):
    """An output constraint enforced token by token with llguidance.

    Exactly one of ``json_schema``, ``regex``, ``choices`` or ``lark`` is set.
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal["json_schema", "regex", "choices", "lark"]
    value: str
    string_choices: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """For ``json_schema``: ``(key, options)`` pairs; the string value of ``key`` (wherever the schema
    puts it) must be one of ``options``. Enforced by a token mask on top of the schema's grammar, so
    requests that differ only here share one compiled grammar (see ``runtime.choices``)."""

    @model_validator(mode="after")
    def _choices_fit(self) -> Constraint:
        if self.string_choices and self.kind != "json_schema":
            raise ValueError("string_choices apply to json_schema constraints only")
        for key, options in self.string_choices:
            if not key or not options:
                raise ValueError(f"string_choices for {key!r}: need a key and at least one option")
        return self

    @property
    def base(self) -> Constraint:
        """This constraint without its string choices (what compiles to a grammar)."""
        return _with_choices(self.kind, self.value, ()) if self.string_choices else self

    def with_string_choices(self, choices: dict[str, list[str] | tuple[str, ...]]) -> Constraint:
        """A copy whose string values of the given keys are limited to the given options (keys with no
        options are left free)."""
        pairs = tuple((k, tuple(v)) for k, v in sorted(choices.items()) if v)
        return _with_choices(self.kind, self.value, pairs)

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | type[BaseModel]) -> Constraint:
        """Constrain the output to JSON that validates against ``schema`` (a dict or pydantic model)."""
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            schema = schema.model_json_schema()
        return cls(kind="json_schema", value=json.dumps(schema))

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        """Constrain the output to match ``pattern`` in full."""
        return cls(kind="regex", value=pattern)

    @classmethod
    def choices(cls, options: list[str] | tuple[str, ...]) -> Constraint:
        """Constrain the output to exactly one of ``options``."""
        if not options:
            raise ValueError("Constraint.choices needs at least one option")
        return cls(kind="choices", value=json.dumps(list(options)))

    @classmethod
    def lark(cls, grammar: str) -> Constraint:
        """Constrain the output with a Lark grammar (llguidance dialect)."""
        return cls(kind="lark", value=grammar)


@lru_cache(maxsize=4096)
def _with_choices(kind: str, value: str, pairs: tuple[tuple[str, tuple[str, ...]], ...]) -> Constraint:
    """One (frozen) constraint per distinct set of choices: a village tick's 500 requests carry
    about 180 distinct ones, each validated once."""
    return Constraint(kind=kind, value=value, string_choices=pairs)


class Request(BaseModel):
    """One generation request.

    Args:
        model: name of the model that should serve it (the scheduler routes by this name).
        prompt: the prompt text, or a list of segments from the most shared to the least shared;
            segments are tokenized separately and concatenated so that a shared leading segment
            always yields the same tokens (and so the same prefix-cache entry).
        sampling: decoding settings.
        constraint: optional output constraint.
        id: unique id, assigned when omitted.
        tag: free-form caller data returned untouched in the result.
    """

    model_config = ConfigDict(frozen=True)

    model: str
    prompt: str | tuple[str, ...]
    sampling: SamplingParams = SamplingParams()
    constraint: Constraint | None = None
    id: str = Field(default_factory=lambda: f"req-{next(_ids)}")
    tag: Any = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _segments_as_tuple(cls, v: Any) -> Any:
        if isinstance(v, list):
            return tuple(v)
        return v

    @model_validator(mode="after")
    def _non_empty(self) -> Request:
        segments = (self.prompt,) if isinstance(self.prompt, str) else self.prompt
        if not segments or not any(segments):
            raise ValueError(f"request {self.id}: the prompt is empty")
        return self

    @property
    def segments(self) -> tuple[str, ...]:
        return (self.prompt,) if isinstance(self.prompt, str) else self.prompt


FinishReason = Literal["stop", "length", "eos", "constraint", "error"]


class Result(BaseModel):
    """What a request produced.

    ``cached_tokens`` counts prompt tokens served from the prefix cache. ``error`` is set (and
    ``finish_reason == "error"``) when the request could not be served; the text is then empty.
    """

    id: str
    model: str
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    cached_tokens: int
    generated_tokens: int
    forced_tokens: int = 0
    latency_s: float = 0.0
    min_logprob: float | None = None
    worker: str | None = None
    error: str | None = None
    tag: Any = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class BatcherStats:
    """What a batcher has done (a worker reports them; the benchmarks read them)."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    shared_prefill_tokens: int = 0
    generated_tokens: int = 0
    forced_tokens: int = 0
    prefill_passes: int = 0
    decode_passes: int = 0
    engine_s: float = 0.0  # inside ONNX Runtime
    decode_engine_s: float = 0.0  # the part of ``engine_s`` spent in decode passes (the rest: prefill)
    step_s: float = 0.0  # inside :meth:`Batcher.step` (engine included)
    add_s: float = 0.0  # queueing requests: tokenizing, compiling constraints

    @property
    def hit_ratio(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
