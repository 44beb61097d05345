"""What each step of the pipeline did to each source's rows: the `Recorder` and the functions that fill it.

The pipeline records as it goes (counts per step, source and action; detail kinds; a few PII-redacted
examples; token lengths); the audit (itune/data/audit.py) and the stats read the recorder afterwards.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from datasets import Dataset

from itune.data.curate import Filter, snippet
from itune.data.stages import column, token_step

ACTIONS = ("in", "dropped", "redacted", "flagged", "truncated")
TOKEN_STEPS = ("max_length", "no_trained")  # built-in token checks, after the token-stage filters


class Recorder:
    """Counts per step, source and action, detail counts and a few examples, as the pipeline goes."""

    def __init__(self, sources: list[str], max_examples: int = 3) -> None:
        self.sources, self.max_examples = sources, max_examples
        self.steps: dict[str, dict[str, Any]] = {}
        self.lengths: dict[str, list[int]] = {}
        self._reserved: Counter[tuple[str, str, str]] = Counter()

    def step(self, name: str, kind: str, target: str, settings: dict[str, Any] | None = None) -> None:
        self.steps[name] = {
            "kind": kind,
            "target": target,
            "settings": settings or {},
            "counts": {s: dict.fromkeys(ACTIONS, 0) for s in self.sources},
            "details": Counter(),
            "examples": {},
        }

    def count(self, step: str, source: str, action: str, n: int) -> None:
        counts = self.steps[step]["counts"][source]
        counts[action] = counts[action] + n if action != "in" else n

    def get(self, step: str, source: str, action: str) -> int:
        return self.steps[step]["counts"][source][action] if step in self.steps else 0

    def detail(self, step: str, detail: str) -> None:
        """Count detail kinds: `email:2,phone:1` adds 2 and 1; `a,b` adds 1 each."""
        for part in filter(None, detail.split(",")):
            kind, _, n = part.partition(":")
            self.steps[step]["details"][kind] += int(n) if n.isdigit() else 1

    def wants_example(self, step: str, action: str, source: str) -> bool:
        """True while the step has fewer than `max_examples` examples of this action from this source."""
        have = sum(e["source"] == source for e in self.steps[step]["examples"].get(action, []))
        return have + self._reserved[(step, action, source)] < self.max_examples

    def reserve(self, step: str, action: str, source: str) -> None:
        self._reserved[(step, action, source)] += 1

    def example(self, step: str, action: str, source: str, row: int, detail: str, text: str) -> None:
        if self._reserved[(step, action, source)]:
            self._reserved[(step, action, source)] -= 1
        examples = self.steps[step]["examples"].setdefault(action, [])
        examples.append({"source": source, "row": int(row), "detail": detail, "text": text})

    def set_lengths(self, source: str, lengths: list[int]) -> None:
        self.lengths[source] = lengths

    def source_summary(self, source: str) -> dict[str, int]:
        return {
            f"{name} {action}": c[action]
            for name, step in self.steps.items()
            for action in ACTIONS[1:]
            if (c := step["counts"][source])[action]
        }


def new_recorder(
    sources: list[str], filters: Sequence[Filter], max_length: int, overlength: str, max_examples: int
) -> Recorder:
    """A recorder with every step declared, in pipeline order: format, row/set filters, token checks."""
    rec = Recorder(sources, max_examples)
    rec.step("format", "format", "malformed rows (data.on_bad_row=skip)")
    for f in sorted(filters, key=lambda f: f.stage == "tokens"):  # stable: token-stage filters last
        rec.step(f.name, f.stage, type(f).__module__ + "." + type(f).__qualname__, f.settings())
    rec.step("max_length", "tokens", f"data.max_length={max_length}, data.overlength={overlength}")
    rec.step("no_trained", "tokens", "rows without a trained token")
    return rec


def record_format(rec: Recorder, source: str, errors: list[str], bad_lines: list[str], n_raw: int) -> None:
    """Count the rows read and the malformed ones (unparsable lines and rows the format refused)."""
    bad = [i for i, e in enumerate(errors) if e]
    rec.count("format", source, "in", n_raw + len(bad_lines))
    rec.count("format", source, "dropped", len(bad) + len(bad_lines))
    for line in bad_lines[: rec.max_examples]:
        rec.example("format", "dropped", source, -1, f"malformed JSON {line}", "")
    for i in bad[: rec.max_examples]:
        rec.example("format", "dropped", source, i, errors[i], "")


def record_row_events(
    rec: Recorder, filters: Sequence[Filter], source: str, cur: Dataset, stop: np.ndarray
) -> None:
    """Count what each row filter did to the rows that reached it; rows reaching each filter."""
    for pos, f in enumerate(filters):
        if f.stage != "tokens":
            rec.count(f.name, source, "in", int((stop >= pos).sum()) if len(stop) else 0)
    verbs = {"drop": "dropped", "redact": "redacted", "flag": "flagged"}
    wanted: list[tuple[str, str, int, str]] = []
    for i, ev in enumerate(column(cur, "events")):
        if not ev:
            continue
        for pos, action, detail in json.loads(ev):
            if pos > stop[i]:  # an earlier set filter dropped the row before this filter saw it
                continue
            f = filters[pos]
            rec.count(f.name, source, verbs[action], 1)
            rec.detail(f.name, detail)
            if rec.wants_example(f.name, verbs[action], source):
                wanted.append((f.name, verbs[action], i, detail))
                rec.reserve(f.name, verbs[action], source)
    if wanted:
        rows = cur.select([i for _, _, i, _ in wanted])
        for (name, action, _, detail), row in zip(wanted, rows, strict=True):
            rec.example(name, action, source, row["row"], detail, snippet(row["messages"]))


def record_token_steps(
    rec: Recorder, filters: Sequence[Filter], max_length: int, source: str, encoded: Dataset
) -> list[int]:
    """Run the token checks on a source's templated rows, record them; the indices of the rows kept."""
    names = ["n_tokens", "n_trained", "status", "row"]
    # datasets leaves an empty dataset's columns as they were: no row reached the template
    cols = encoded.select_columns(names).to_dict() if len(encoded) else {k: [] for k in names}
    keep = []
    triples = zip(cols["n_tokens"], cols["n_trained"], cols["status"], strict=True)
    for k, (nt, ntr, st) in enumerate(triples):
        step, action, detail = token_step(filters, max_length, nt, ntr, st)
        if step is not None:
            rec.count(step, source, action, 1)
            if rec.wants_example(step, action, source):
                text = snippet(encoded[k]["messages"])
                rec.example(step, action, source, cols["row"][k], detail, text)
        if action != "dropped":
            keep.append(k)
    for step in [f.name for f in filters if f.stage == "tokens"] + list(TOKEN_STEPS):
        rec.count(step, source, "in", len(encoded))  # every templated row is checked
    rec.set_lengths(source, cols["n_tokens"])
    return keep


def no_rows_message(rec: Recorder, filters: Sequence[Filter], source: str, max_length: int) -> str:
    """Why a source has no usable row left, step by step."""
    dropped = [
        f"{rec.get(f.name, source, 'dropped')} dropped by curate.filters.{f.name}"
        for f in filters
        if rec.get(f.name, source, "dropped")
    ]
    return (
        f"yields no usable rows: {rec.get('format', source, 'in')} read, "
        f"{rec.get('format', source, 'dropped')} malformed, "
        + "".join(d + ", " for d in dropped)
        + f"{rec.get('max_length', source, 'dropped')} longer than max_length={max_length}, "
        f"{rec.get('no_trained', source, 'dropped')} without trained tokens"
    )


def source_stats(rec: Recorder, filters: Sequence[Filter], source: str) -> dict[str, int]:
    """The `data/<source>/rows_*` counts of metrics.json that the recorder holds."""
    total = lambda action: sum(rec.get(f.name, source, action) for f in filters)  # noqa: E731
    return {
        f"data/{source}/rows_read": rec.get("format", source, "in"),
        f"data/{source}/rows_malformed_skipped": rec.get("format", source, "dropped"),
        f"data/{source}/rows_curated_dropped": total("dropped"),
        f"data/{source}/rows_redacted": total("redacted"),
        f"data/{source}/rows_flagged": total("flagged"),
        f"data/{source}/rows_too_long_dropped": rec.get("max_length", source, "dropped"),
        f"data/{source}/rows_truncated": rec.get("max_length", source, "truncated"),
        f"data/{source}/rows_without_trained_tokens": rec.get("no_trained", source, "dropped"),
    }
