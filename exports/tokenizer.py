"""Small byte-level BPE tokenizers trained with ``tokenizers``.

Small models need small vocabularies (the output layer of a 49k vocabulary would dwarf a 1M-parameter
model), so the project trains its own. The files are saved in the Hugging Face layout
(``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``) so transformers,
optimum, llguidance and the runtime all read them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"
PAD = "<|pad|>"

# A small built-in corpus so tiny test models need no data files: plain English, numbers and the
# JSON punctuation that constrained outputs are made of.
_BUILTIN = """
The village wakes at dawn. Farmers walk to the fields, merchants open their stalls at the market,
woodcutters head into the forest and fishers go down to the river. At noon the tavern fills with
talk of prices, weather and the harvest. In the evening everyone goes home to eat and sleep.
{"type": "move", "direction": "north"} {"type": "talk", "to": "Ada", "text": "Good morning!"}
{"type": "trade", "with": "Bram", "give": {"wheat": 2}, "take": {"coins": 3}} {"type": "idle"}
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 25 30 40 50 64 100 128 256 512 1000
north south east west gather eat sleep trade accept reject hunger energy social coins wheat fish wood
A quick brown fox jumps over the lazy dog. Numbers, names and places: Ada, Bram, Cora, Dov, Elin.
"""


def train_bpe(texts: Iterable[str] | None = None, vocab_size: int = 512, min_frequency: int = 1) -> Tokenizer:
    """Train a byte-level BPE tokenizer.

    Args:
        texts: training text; the built-in corpus when omitted.
        vocab_size: target vocabulary size (byte alphabet and special tokens included).
        min_frequency: minimum pair frequency for a merge.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = list(texts) if texts is not None else [_BUILTIN] * 4
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, out_dir: str | Path, model_max_length: int = 2048) -> None:
    """Save ``tok`` in the Hugging Face layout into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    special = {"eos_token": EOS, "pad_token": PAD, "bos_token": EOS, "unk_token": EOS}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def special_ids(tok: Tokenizer) -> dict[str, int]:
    return {"eos": tok.token_to_id(EOS), "pad": tok.token_to_id(PAD)}


def runtime_tokenizer(hf_dir: str | Path, skip_segments: int | None = None) -> tuple[Any, int, int]:
    """The runtime tokenizer of ``hf_dir`` and its EOS and PAD ids.

    ``skip_segments``: leading prompt segments the model does not read; by default what the
    directory's ``config.json`` says (``prompt_skip_segments``), 0 when it has none.
    """
    from runtime.tokenizer import Tokenizer

    if skip_segments is None:
        config = Path(hf_dir) / "config.json"
        skip_segments = (
            json.loads(config.read_text()).get("prompt_skip_segments", 0) if config.is_file() else 0
        )
    tok = Tokenizer(Path(hf_dir) / "tokenizer.json", skip_segments=int(skip_segments or 0))
    return tok, tok.token_to_id(EOS), tok.token_to_id(PAD)
