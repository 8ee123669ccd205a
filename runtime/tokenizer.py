"""Tokenization for the serving core (``tokenizers`` only, no transformers).

Prompts arrive as segments ordered from the most shared to the least shared. Each segment is
tokenized on its own and the ids are concatenated, so a leading segment shared by many agents always
produces the same ids — which is what lets the radix cache serve it. Segment encodings are memoised:
world rules and role texts repeat in every request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer


class Tokenizer:
    """A model's tokenizer plus the special ids the engine needs.

    Args:
        path: the ``tokenizer.json`` file.
        eos_token_ids: end-of-sequence ids (from the model config).
        bos_token_id: prepended once to every prompt when ``add_bos`` is true.
        add_bos: whether prompts start with ``bos_token_id``.
        cache_size: how many distinct segments to memoise.
        skip_segments: leading prompt segments this model does not read (it was trained without
            them: see ``ModelInfo.skip_segments``); :meth:`encode_prompt` drops them.
    """

    def __init__(
        self,
        path: str | Path,
        eos_token_ids: tuple[int, ...] = (),
        bos_token_id: int | None = None,
        add_bos: bool = False,
        cache_size: int = 4096,
        skip_segments: int = 0,
    ):
        self.path = Path(path)
        self._tok = _HFTokenizer.from_file(str(self.path))
        self._tok.no_padding()
        self._tok.no_truncation()
        # ``encode_batch_fast`` (tokenizers >= 0.21) skips the character offsets nobody here reads:
        # 27 against 38 µs a village observation.
        self._encode_batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        self.eos_token_ids = tuple(eos_token_ids)
        self.bos_token_id = bos_token_id
        self.add_bos = add_bos and bos_token_id is not None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self._cache: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._cache_size = cache_size
        self.skip_segments = skip_segments

    def to_json(self) -> str:
        """The serialized tokenizer (what llguidance builds its token tables from)."""
        return self._tok.to_str()

    def encode_segment(self, text: str) -> tuple[int, ...]:
        ids = self._cache.get(text)
        if ids is None:
            ids = tuple(self._tok.encode(text, add_special_tokens=False).ids)
            self._cache[text] = ids
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(text)
        return ids

    def prefetch(self, prompts: Iterable[tuple[str, ...] | list[str]]) -> None:
        """Encode in one batched call every segment of ``prompts`` not memoised yet (as many as the
        memo holds), so the :meth:`encode_prompt` calls that follow find them: one call into the
        tokenizer per batch of requests instead of one per new segment."""
        k = self.skip_segments
        todo = list(dict.fromkeys(seg for p in prompts for seg in p[k:] if seg not in self._cache))
        todo = todo[: self._cache_size]
        if not todo:
            return
        for text, enc in zip(todo, self._encode_batch(todo, add_special_tokens=False)):
            self._cache[text] = tuple(enc.ids)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def encode_prompt(self, segments: tuple[str, ...] | list[str]) -> list[int]:
        """Token ids of a prompt given as segments (most shared first), less the segments this model
        skips; a prompt with nothing left after them is a ``ValueError``."""
        if self.skip_segments:
            if len(segments) <= self.skip_segments:
                raise ValueError(
                    f"this model reads prompts from segment {self.skip_segments + 1} on (it was trained "
                    f"without the first {self.skip_segments}); the prompt has {len(segments)} segment(s)"
                )
            segments = segments[self.skip_segments :]
        ids: list[int] = [self.bos_token_id] if self.add_bos else []  # type: ignore[list-item]
        for seg in segments:
            ids.extend(self.encode_segment(seg))
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)
