"""Weighted mixing of sources with defined semantics.

A source's weight is its share of the final mixture's examples: with weights w_i and a mixture size N,
source i contributes round(N * w_i / sum(w)) examples (largest remainder, so the counts add up to N).
A source smaller than its share is repeated whole as often as it fits and topped up with a random
subset (upsampling); a larger one is subsampled without replacement. Everything is drawn from
`numpy.random.default_rng(seed)`, so the same seed gives the same mixture.
"""

from __future__ import annotations

import numpy as np


def mix_counts(weights: dict[str, float], total: int) -> dict[str, int]:
    """Examples per source for a mixture of `total` examples.

    >>> mix_counts({"a": 3, "b": 1}, 10)
    {'a': 8, 'b': 2}
    """
    bad = {k: w for k, w in weights.items() if not isinstance(w, int | float) or w < 0}
    if bad:
        raise ValueError(f"mix weights must be numbers >= 0, got {bad}")
    s = sum(weights.values())
    if s <= 0:
        raise ValueError(f"at least one mix weight must be > 0, got {weights}")
    exact = {k: total * w / s for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    by_remainder = sorted(weights, key=lambda k: (counts[k] - exact[k], list(weights).index(k)))
    for k in by_remainder[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def draw_indices(available: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` row indices out of `available`: whole passes, then a random subset without replacement.

    >>> sorted(draw_indices(3, 7, np.random.default_rng(0)).tolist())[:6]
    [0, 0, 1, 1, 2, 2]
    """
    if count and not available:
        raise ValueError("cannot draw rows from an empty source")
    passes, rest = divmod(count, available) if available else (0, 0)
    parts = [np.arange(available)] * passes + [rng.permutation(available)[:rest]]
    return np.concatenate(parts).astype(np.int64)


DROP_REASONS = {  # data/<source>/<stat> → column of the mixture table
    "rows_malformed_skipped": "malformed",
    "rows_curated_dropped": "filtered",
    "rows_too_long_dropped": "too long",
    "rows_without_trained_tokens": "no target",
}


def mixture_table(stats: dict[str, float], sources: list[str]) -> list[dict[str, float | str]]:
    """One row per source from the datamodule's stats: rows read, dropped by reason, available, in mix,
    passes (in mix / available: above 1 the source is repeated) and share.

    >>> s = {"data/a/rows_read": 30, "data/a/rows_too_long_dropped": 4, "data/a/rows_train_available": 24,
    ...      "data/a/rows_in_mix": 96, "data/a/share": 1.0}
    >>> mixture_table(s, ["a"])[0]["passes"]
    4.0
    """
    rows: list[dict[str, float | str]] = []
    for name in sources:
        get = lambda key, name=name: stats.get(f"data/{name}/{key}", 0)  # noqa: E731
        available, in_mix = get("rows_train_available"), get("rows_in_mix")
        row: dict[str, float | str] = {"source": name, "read": get("rows_read")}
        row |= {column: get(key) for key, column in DROP_REASONS.items()}
        row |= {
            "val": get("rows_val"),
            "available": available,
            "in mix": in_mix,
            "passes": in_mix / available if available else 0.0,
            "share": get("share"),
        }
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, float | str]]) -> str:
    """The mixture table as aligned plain text (console and train.log alike)."""
    if not rows:
        return ""
    columns = list(rows[0])

    def cell(value: float | str, column: str) -> str:
        if column == "passes":
            return f"{value:.2f}"
        if column == "share":
            return f"{value:.1%}"
        return str(int(value)) if isinstance(value, float | int) else str(value)

    cells = [[cell(r[c], c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(lines)


_DROP_HINTS = {
    "malformed": "data.on_bad_row=skip skipped them",
    "filtered": "the curate filters dropped them",
    "too long": "raise data.max_length or set data.overlength=truncate",
    "no target": "they have no assistant content",
}


def mixture_warnings(rows: list[dict[str, float | str]], max_repeats: float) -> list[str]:
    """A message per source that lost rows, or is repeated more than `max_repeats` times in the mixture.

    >>> mixture_warnings([{"source": "a", "read": 30, "malformed": 0, "filtered": 0, "too long": 4,
    ...     "no target": 0, "available": 26, "in mix": 26, "passes": 1.0}], 4)[0][:49]
    "data source 'a': 4 of 30 rows dropped (4 too long"
    """
    messages = []
    for r in rows:
        drops = {c: int(r[c]) for c in DROP_REASONS.values() if r[c]}
        if drops:
            why = "; ".join(f"{n} {c}: {_DROP_HINTS[c]}" for c, n in drops.items())
            messages.append(
                f"data source {r['source']!r}: {sum(drops.values())} of {int(r['read'])} rows dropped ({why})"
            )
        if float(r["passes"]) > max_repeats:
            messages.append(
                f"data source {r['source']!r} is repeated {r['passes']:.1f}x in the mixture "
                f"({int(r['in mix'])} rows from {int(r['available'])}): lower data.num_samples or its "
                f"weight, or raise data.max_repeats (now {max_repeats:g}) to accept it"
            )
    return messages
