"""Small helpers shared by the serving tests."""

from __future__ import annotations

from runtime.artifacts import load_model_dir
from runtime.batcher import Batcher
from runtime.engine import OrtEngine
from runtime.kv_cache import RadixCache
from runtime.tokenizer import Tokenizer


def make_batcher(model_dir, cache: bool = True, append_kv: bool | None = None, **kw) -> Batcher:
    """An in-process batcher over ``model_dir`` (one ORT thread, 32 MiB prefix cache); ``append_kv``
    as :class:`OrtEngine` takes it."""
    art = load_model_dir(model_dir)
    engine = OrtEngine(art, intra_op_threads=1, append_kv=append_kv)
    tok = Tokenizer(art.tokenizer_path, art.info.eos_token_ids)
    return Batcher(engine, tok, RadixCache(32 << 20) if cache else None, **kw)
