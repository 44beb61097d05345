"""The set filters (exact and near duplicates) over the whole mixture, sources in order, first occurrence
kept; what they found is cached beside the curated data (keyed by its fingerprints and the settings)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from itune.data.curate import Filter, snippet
from itune.data.records import Recorder
from itune.data.stages import column, fingerprint


def set_pass(
    curated: list[Dataset], names: list[str], filters: Sequence[Filter], rec: Recorder
) -> list[np.ndarray]:
    """Per source, the position of the filter that drops each row (len(filters): kept); counted in `rec`."""
    sets = [(pos, f) for pos, f in enumerate(filters) if f.stage == "set"]
    cache = _cache_file(curated, sets)
    if cache is not None and cache.is_file():
        found = json.loads(cache.read_text())
    else:
        found = find_duplicates(curated, names, sets)
        if cache is not None:  # whole or not at all: another rank may be reading it
            tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(found))
            os.replace(tmp, cache)
    stops = []
    for s, (name, cur) in enumerate(zip(names, curated, strict=True)):
        stop = np.asarray(column(cur, "drop_at"), dtype=np.int64)
        for i, pos, row, first in found[s]:
            f = filters[pos]
            stop[i] = pos
            rec.count(f.name, name, "dropped", 1)
            if rec.wants_example(f.name, "dropped", name):
                detail = f"duplicate of {first[0]} row {first[1]}"
                rec.example(f.name, "dropped", name, row, detail, snippet(cur[i]["messages"]))
        stops.append(stop)
    return stops


def _cache_file(curated: list[Dataset], sets: list[tuple[int, Filter]]) -> Path | None:
    files = [c.cache_files for c in curated]
    if not sets or not all(files):
        return None
    key = fingerprint("sets", [c._fingerprint for c in curated], [(p, f.fingerprint()) for p, f in sets])
    return Path(files[0][0]["filename"]).parent / f"itune-sets-{key}.json"


def find_duplicates(
    curated: list[Dataset], names: list[str], sets: list[tuple[int, Filter]]
) -> list[list[Any]]:
    """Per source: [index, filter position, row, [source, row] of the first occurrence] of each dup."""
    indexes = {f.name: f.index() for _, f in sets}
    found: list[list[Any]] = []
    for name, cur in zip(names, curated, strict=True):
        dups: list[Any] = []
        if sets and len(cur):
            cols = ["row", "drop_at"] + [f"key_{f.name}" for _, f in sets]
            i = 0
            for batch in cur.select_columns(cols).iter(batch_size=2000):
                for j in range(len(batch["row"])):
                    for pos, f in sets:
                        if pos >= batch["drop_at"][j]:
                            break
                        first = indexes[f.name].check_add(batch[f"key_{f.name}"][j], (name, batch["row"][j]))
                        if first is not None:
                            dups.append([i, pos, batch["row"][j], list(first)])
                            break
                    i += 1
        found.append(dups)
    return found
