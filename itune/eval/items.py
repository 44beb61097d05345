"""Per-item scores of the eval suites: stable item ids, the `ItemScores` value and the items files.

A suite's `run` returns, besides its aggregate metrics and samples, an `ItemScores`: one row per item
(`{"id": ..., <column>: number, ...}`), the estimator of each metric over those columns (see
`itune.eval.stats`) and metadata (e.g. the prompt format). The run directory gets one JSON line per item
and model in `items_base.jsonl` / `items_tuned.jsonl`:

    {"suite": "arc_easy", "id": "3f0c9a1b2d4e", "acc": 1, "acc_norm": 0, "margin": -0.012, "logprobs": [...]}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

ITEMS_FILE = "items_{}.jsonl"  # items_base.jsonl, items_tuned.jsonl


class ItemScores(TypedDict):
    """Per-item scores of one suite on one model (JSON-ready; cached with the base results)."""

    estimators: dict[str, dict[str, Any]]  # metric → estimator spec over the rows' columns
    rows: list[dict[str, Any]]  # {"id": str, column: number, ...}; other keys are details
    meta: dict[str, Any]  # e.g. {"format": "plain", "shape": "arc"}


def item_ids(texts: Iterable[str]) -> list[str]:
    """Stable ids: 12 hex digits of the text's sha1, with `~2`, `~3`... on repeated texts.

    >>> item_ids(["a", "b", "a"])
    ['86f7e437faa5', 'e9d71f5ee7c9', '86f7e437faa5~2']
    """
    seen: dict[str, int] = {}
    ids = []
    for text in texts:
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]
        seen[digest] = seen.get(digest, 0) + 1
        ids.append(digest if seen[digest] == 1 else f"{digest}~{seen[digest]}")
    return ids


def means(columns: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Estimators `metric = mean of the column of the same name`.

    >>> means(["acc"])
    {'acc': {'stat': 'mean', 'column': 'acc'}}
    """
    return {c: {"stat": "mean", "column": c} for c in columns}


def item_scores(estimators: dict[str, dict[str, Any]], rows: list[dict[str, Any]], **meta: Any) -> ItemScores:
    """An ItemScores value, checking that ids are unique."""
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("item ids must be unique within a suite")
    return {"estimators": estimators, "rows": rows, "meta": meta}


def write_items(run_dir: Path, items: Mapping[str, Mapping[str, ItemScores | None]]) -> None:
    """`items_<model>.jsonl` per model (`base`, `tuned`): one line per suite item."""
    for model, suites in items.items():
        lines = [
            json.dumps({"suite": suite, **row}, ensure_ascii=False)
            for suite, scores in suites.items()
            if scores
            for row in scores["rows"]
        ]
        text = "".join(line + "\n" for line in lines)
        (run_dir / ITEMS_FILE.format(model)).write_text(text, encoding="utf-8")


def read_items(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Rows per suite of an items file written by `write_items`."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows.setdefault(row.pop("suite"), []).append(row)
    return rows
