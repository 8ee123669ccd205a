"""Action schemas: pydantic discriminated unions, their JSON schema, and parsing model output.

A world declares its actions as pydantic models sharing a ``Literal`` discriminator field (by
convention ``action``) and combines them with :func:`action_union`. The JSON schema of that union
(:func:`action_schema`) is what the constrained decoder enforces, so a served model's output always
parses with :func:`parse_action`; anything else raises :class:`ActionParseError` with the reason.
"""

from __future__ import annotations

import copy
import json
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

_adapters: dict[int, tuple[Any, TypeAdapter]] = {}
_DECODER = json.JSONDecoder()  # one for all: building one per call was a third of parsing


class ActionParseError(ValueError):
    """Model output that is not a valid action; the message says why."""


def action_union(*models: type[BaseModel], discriminator: str = "action") -> Any:
    """Combine action models into one discriminated union type.

    Args:
        models: action classes, each with a ``Literal`` field named ``discriminator``.
        discriminator: the field that tells the actions apart.

    Returns:
        An ``Annotated[Union[...], Field(discriminator=...)]`` usable with the helpers here.
    """
    if not models:
        raise ValueError("action_union needs at least one action model")
    for model in models:
        if discriminator not in model.model_fields:
            raise TypeError(
                f"{model.__name__} has no {discriminator!r} field; give it "
                f'`{discriminator}: Literal["..."] = "..."` so the union can tell actions apart'
            )
    if len(models) == 1:
        return models[0]
    return Annotated[Union[models], Field(discriminator=discriminator)]  # noqa: UP007


def action_adapter(union: Any) -> TypeAdapter:
    """A cached :class:`pydantic.TypeAdapter` for ``union`` (building one costs milliseconds)."""
    key = id(union)
    hit = _adapters.get(key)
    if hit is None or hit[0] is not union:
        hit = (union, TypeAdapter(union))
        _adapters[key] = hit
    return hit[1]


def action_schema(union: Any, discriminator: str = "action") -> dict[str, Any]:
    """The JSON schema of an action union: what the constrained decoder enforces.

    Pydantic's schema is adjusted for decoders: the discriminator is made required in every
    action (pydantic leaves out fields with defaults, yet validation needs it), and ``oneOf``
    becomes ``anyOf`` (the same language here, since the discriminator tells actions apart,
    and llguidance compiles ``anyOf`` exactly but not ``oneOf``).
    """
    schema = copy.deepcopy(action_adapter(union).json_schema())
    if "oneOf" in schema:
        schema["anyOf"] = schema.pop("oneOf")
        schema.pop("discriminator", None)
    objects = list(schema.get("$defs", {}).values()) or [schema]
    for obj in objects:
        props = obj.get("properties", {})
        if discriminator in props:
            props[discriminator].pop("default", None)
            required = [r for r in obj.get("required", []) if r != discriminator]
            obj["required"] = [discriminator, *required]
    return schema


def action_json(action: BaseModel) -> str:
    """An action as the exact text a constrained model emits and is trained on: fields in schema
    order, ``", "`` and ``": "`` separators (the serving core's JSON grammar settings)."""
    return json.dumps(action.model_dump(mode="json"), separators=(", ", ": "))


def parse_action(union: Any, text: str) -> BaseModel:
    """Parse model output into an action.

    Args:
        union: the world's action union (see :func:`action_union`).
        text: the generated text, one JSON object (surrounding whitespace is ignored).

    Returns:
        The validated action model.

    Raises:
        ActionParseError: the text is empty, not JSON, has trailing text, or does not match any
            action; the message quotes the text and the first problems.
    """
    stripped = text.strip()
    if not stripped:
        raise ActionParseError("empty output: expected one JSON action object")
    try:
        value, end = _DECODER.raw_decode(stripped)
    except json.JSONDecodeError as exc:
        raise ActionParseError(f"not JSON ({exc.msg} at char {exc.pos}): {stripped[:80]!r}") from None
    if stripped[end:].strip():
        raise ActionParseError(f"text after the JSON object: {stripped[end : end + 40]!r}")
    try:
        return action_adapter(union).validate_python(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'action'}: {err['msg']}" for err in exc.errors()[:3]
        )
        raise ActionParseError(f"invalid action {stripped[:80]!r}: {problems}") from None
