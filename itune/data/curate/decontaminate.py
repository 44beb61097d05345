"""The decontamination filter: drop training rows that share a long word n-gram with an evaluation set."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import xxhash

from itune.data.curate.base import Filter, Verdict, file_digest, word_ngrams, words
from itune.data.messages import Message


class Decontaminate(Filter):
    """Drop training rows that share a long word n-gram with an evaluation set.

    Every string value of every row of each eval file (or only the columns in `fields`) is normalised
    (`normalise`) and cut into word n-grams; a training turn that contains one of them is dropped. An eval
    text shorter than `n` words but at least `min_words` long counts as a whole.

    Args:
        files: evaluation files (.json/.jsonl/.csv/.parquet) of the suites the run is judged on.
        n: n-gram length in words (13 as in GPT-3's contamination study).
        min_words: eval texts shorter than this (and shorter than n) are ignored.
        fields: eval columns to read (default: every string value, nested lists/dicts included).
    """

    def __init__(
        self, files: list[str] | None = None, n: int = 13, min_words: int = 8, fields: list[str] | None = None
    ) -> None:
        if n < 1 or min_words < 1:
            raise ValueError(f"curate Decontaminate needs n >= 1 and min_words >= 1, got {n}, {min_words}")
        self.files, self.n, self.min_words, self.fields = list(files or []), n, min_words, fields
        self._digests = [file_digest(f, "decontamination file") for f in self.files]
        self._grams: dict[int, int] = {}  # n-gram hash → index of the eval file it came from
        self._lengths: set[int] = set()  # word lengths of the n-grams stored
        self.eval_texts = 0
        for i, path in enumerate(self.files):
            for text in _eval_texts(path, fields):
                ws = words(text)
                if len(ws) < min(n, min_words):
                    continue
                self.eval_texts += 1
                self._lengths.add(min(len(ws), n))
                for g in word_ngrams(ws, n):
                    self._grams.setdefault(_h64(g), i)

    def settings(self) -> dict[str, Any]:
        return super().settings() | {"file_digests": self._digests}

    def __call__(self, messages: list[Message]) -> Verdict:
        if not self._grams:
            return Verdict("keep", messages)
        for m in messages:
            ws = words(m["content"])
            for length in self._lengths:
                for g in word_ngrams(ws, length) if len(ws) >= length else []:
                    hit = self._grams.get(_h64(g))
                    if hit is not None:
                        return Verdict("drop", messages, f"{Path(self.files[hit]).name}: '{g}'")
        return Verdict("keep", messages)


def _h64(text: str) -> int:
    return xxhash.xxh64_intdigest(text.encode())


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def _eval_texts(path: str, fields: list[str] | None) -> Iterable[str]:
    """Every string of an evaluation file (or of its `fields` columns), one at a time."""
    from itune.data.sources import load_source  # datasets import only when a file is given

    ds = load_source(str(Path(path).expanduser()))
    if fields:
        missing = [f for f in fields if f not in ds.column_names]
        if missing:
            raise ValueError(f"decontamination file {path}: no column(s) {missing}; has {ds.column_names}")
        ds = ds.select_columns(fields)
    for row in ds:
        yield from _strings(row)
