"""The configured filters in order, and their run on a batch of rows (a `datasets.map` function)."""

from __future__ import annotations

import json
from typing import Any

from itune.data.curate.base import Filter, content_hash
from itune.data.curate.dedup import NearDedup
from itune.data.messages import Message


def build_filters(filters: dict[str, Any] | None) -> list[Filter]:
    """The configured filters in order, each named by its config key; None entries are switched off."""
    out: list[Filter] = []
    for name, f in (filters or {}).items():
        if f is None:
            continue
        if not isinstance(f, Filter):
            raise TypeError(
                f"curate.filters.{name} is a {type(f).__name__}, not a filter; give it a `_target_` such as "
                "itune.data.curate.PII, Terms, Decontaminate, ExactDedup, NearDedup or Length"
            )
        f.name = name
        out.append(f)
    return out


def curate_batch(batch: dict[str, list[Any]], filters: list[Filter]) -> dict[str, list[Any]]:
    """datasets.map (batched) function: run the row and set filters in order on each row's messages.

    Each filter sees the batch's surviving rows at once (so a classifier or MinHash runs vectorised), in
    the configured order: a row dropped by one filter is not shown to the next ones.

    Adds `drop_at` (position of the first row filter that dropped the row; len(filters) when none),
    `events` (JSON list of [position, action, detail] of row filters that acted), `sha` (content hash of the
    final messages) and one `key_<name>` column per set filter (empty past the drop point).
    """
    n_rows = len(batch["messages"])
    msgs: list[list[Message]] = list(batch["messages"])
    drop_at, acted = [len(filters)] * n_rows, [[] for _ in range(n_rows)]
    # "" / [] for rows dropped before a set filter (a fixed column type for every batch)
    keys: dict[str, list[Any]] = {
        f.name: [[] if isinstance(f, NearDedup) else ""] * n_rows for f in filters if f.stage == "set"
    }
    alive = list(range(n_rows))
    for pos, f in enumerate(filters):
        convs = [msgs[r] for r in alive]
        if f.stage == "set":
            found = f.keys(convs) if isinstance(f, NearDedup) else [f.key(m) for m in convs]
            for r, k in zip(alive, found, strict=True):
                keys[f.name][r] = k
        elif f.stage == "row":
            for r, v in zip(alive, f.verdicts(convs), strict=True):
                if v.action != "keep":
                    acted[r].append([pos, v.action, v.detail])
                msgs[r] = v.messages
                if v.action == "drop":
                    drop_at[r] = pos
            alive = [r for r in alive if drop_at[r] == len(filters)]
    out = {
        "messages": msgs,
        "drop_at": drop_at,
        "events": [json.dumps(a) if a else "" for a in acted],
        "sha": [content_hash(m) for m in msgs],
    }
    return out | {f"key_{name}": v for name, v in keys.items()}
