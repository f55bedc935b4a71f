"""Tokenizers and `prepare` (text -> token shards)."""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, Iterable, List, Union

import numpy as np

from . import _stability


class Tokenizer:
    """A tokenizer: "gpt2", "gpt2:DIR", "bytes" or "sp:MODEL_FILE" (README: Data)."""

    def __init__(self, spec: str = "gpt2") -> None:
        self._t = _stability.Tokenizer(spec)

    def encode(self, text: str) -> np.ndarray:
        """int32 token ids of ``text`` (special-token text is ordinary text)."""
        return self._t.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids`` (ValueError for ids outside the vocabulary)."""
        return self._t.decode([int(i) for i in ids])

    @property
    def vocab_size(self) -> int:
        """Number of ids."""
        return self._t.vocab_size

    @property
    def eot_id(self) -> int:
        """The end-of-text id that separates documents."""
        return self._t.eot_id

    @property
    def name(self) -> str:
        """The spec that loads this tokenizer again."""
        return self._t.name


def load_tokenizer(spec: str = "gpt2") -> Tokenizer:
    """``Tokenizer(spec)``."""
    return Tokenizer(spec)


def prepare(inputs: Union[str, List[str]], out: str, tokenizer: str = "gpt2", val_fraction: float = 0.05,
            shard_tokens: int = 100_000_000, force: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Text files or folders -> train/val shards in ``out`` (README: Data). Returns the summary."""
    if isinstance(inputs, str):
        inputs = [inputs]
    inputs = [os.path.abspath(p) for p in inputs]

    def show(done: int, total: int, tokens: int) -> None:
        sys.stderr.write(f"\rprepare: {done}/{total} documents, {tokens} tokens")
        if done == total:
            sys.stderr.write("\n")

    return json.loads(_stability.prepare(inputs, os.path.abspath(out), tokenizer, float(val_fraction),
                                         int(shard_tokens), bool(force), show if progress else None))
