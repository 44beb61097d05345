"""The mix manifest: which rows went in (source, row index in its file, content hash), in training order,
the validation rows and `mixture_hash` (sha256 of both lists); written as manifest.json by the audit."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from datasets import Dataset

from itune.data.sources import Source


def rows_hash(rows: list[list[Any]]) -> str:
    """sha256 of a list of manifest rows, one JSON line each.

    >>> rows_hash([["a", 0, "ff"]])[:12]
    '3a4bfadc5910'
    """
    h = hashlib.sha256()
    for r in rows:
        h.update((json.dumps(r) + "\n").encode())
    return h.hexdigest()


def listing(ds: Dataset | None, names: list[str]) -> list[list[Any]]:
    """[source name, row, sha] of every row of a mixed dataset, in order."""
    if ds is None or not len(ds):
        return []
    cols = ds.select_columns(["source", "row", "sha"]).to_dict()
    return [[names[s], r, h] for s, r, h in zip(cols["source"], cols["row"], cols["sha"], strict=True)]


def build_manifest(
    sources: list[Source],
    train: Dataset,
    val: Dataset | None,
    counts: dict[str, int],
    available: dict[str, int],
    *,
    seed: int,
    num_samples: int | str | None,
    template_fingerprint: str,
    head_rows: int | None = None,
) -> dict[str, Any]:
    """The manifest of a mixture of `counts` rows per source out of `available` ones.

    `head_rows` (streaming) is how many rows of each source the mixture listed here was drawn from.
    """
    names = [s.name for s in sources]
    total = sum(counts.values())
    wsum = sum(s.weight for s in sources)
    train_rows, val_rows = listing(train, names), listing(val, names)
    return {
        "mode": "map" if head_rows is None else "streaming",
        "note": (
            "train lists the training mixture in the order of one epoch before the loader's shuffle"
            if head_rows is None
            else f"streaming: rows of the mixture drawn from the first {head_rows} rows of each source "
            "(the audit sample); the streamed training order is not listed"
        ),
        "seed": seed,
        "num_samples": num_samples,
        "template_fingerprint": template_fingerprint,
        "sources": {
            s.name: {
                "path": s.path,
                "format": s.format,
                "weight": s.weight,
                "share_by_weight": s.weight / wsum,
                "share_effective": counts[s.name] / total if total else 0.0,
                "rows_available": available[s.name],
                "rows_in_mix": counts[s.name],
                "passes": counts[s.name] / available[s.name] if available[s.name] else 0.0,
                "upsampled": counts[s.name] > available[s.name],
            }
            for s in sources
        },
        "columns": ["source", "row", "sha"],
        "mixture_hash": rows_hash(train_rows + [["--val--", 0, ""]] + val_rows),
        "train": train_rows,
        "val": val_rows,
    }
