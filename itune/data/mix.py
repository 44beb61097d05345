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
