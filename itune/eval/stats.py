"""Paired statistics of a base-vs-tuned comparison on per-item scores (numpy + scipy, no model code).

Every metric of a suite is an *estimator* of its items' column sums, declared by the suite:

- `{"stat": "mean", "column": c}`: the mean of a per-item score (accuracy, pass rate, ROUGE-L, EM);
- `{"stat": "ratio", "num": a, "den": b}`: `sum(a) / sum(b)` (token-weighted loss, instruction accuracy);
- `{"stat": "exp_ratio", "num": a, "den": b}`: `exp(sum(a) / sum(b))` (perplexity);
- `{"stat": "bleu", "n_gram": 4}`: corpus BLEU from per-item n-gram counts (as torchmetrics computes it).

Base and tuned items are paired by id. For each metric `compare_metric` gives the *improvement* (positive =
better; relative for lower-is-better metrics), a percentile CI from a paired bootstrap (the same resampled
items on both models, so token-weighted metrics are ratio-of-sums bootstraps), a two-sided p-value (exact
McNemar for 0/1 items, otherwise a sign-flip permutation test that swaps base and tuned per item: exact over
all 2^n swaps when that is at most `n_boot`), and the minimum detectable effect (MDE, see
`min_detectable_effect`). Resampling is seeded by `seed` and the paired item ids, so metrics on the same
items share their bootstrap resamples (which makes a joint bootstrap of summaries valid).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy.stats import binomtest

Estimator = dict[str, Any]
BLEU_PREFIX = "bleu_"
_BLOCK = 2_000_000  # matrix cells per resampling block (bounds memory for large suites)


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    """Settings of the paired statistics (`eval.stats`).

    Args:
        n_boot: bootstrap resamples for CIs and random swaps for permutation tests.
        alpha: significance level (after Holm correction); CIs are at level 1 - alpha.
        power: power at which the minimum detectable effect is stated.
        seed: base seed of every resampling.
    """

    n_boot: int = 2000
    alpha: float = 0.05
    power: float = 0.8
    seed: int = 0

    @classmethod
    def from_cfg(cls, node: Mapping[str, Any] | None) -> StatsConfig:
        """From an `eval.stats` config node (missing keys keep their defaults)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        given = dict(node or {})
        unknown = sorted(set(given) - fields)
        if unknown:
            raise ValueError(f"eval.stats: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
        config = cls(**given)
        if config.n_boot < 1 or not 0 < config.alpha < 1 or not 0 < config.power < 1:
            raise ValueError(f"eval.stats: need n_boot >= 1 and alpha, power in (0, 1), got {config}")
        return config


def estimator_columns(spec: Estimator) -> list[str]:
    """The item columns an estimator reads.

    >>> estimator_columns({"stat": "ratio", "num": "loss_sum", "den": "tokens"})
    ['loss_sum', 'tokens']
    """
    stat = spec["stat"]
    if stat == "mean":
        return [spec["column"]]
    if stat in ("ratio", "exp_ratio"):
        return [spec["num"], spec["den"]]
    if stat == "bleu":
        n = int(spec.get("n_gram", 4))
        grams = [f"{BLEU_PREFIX}{kind}_{k}" for kind in ("match", "total") for k in range(1, n + 1)]
        return [*grams, f"{BLEU_PREFIX}hyp_len", f"{BLEU_PREFIX}ref_len"]
    raise ValueError(f"unknown estimator {stat!r}; valid: mean, ratio, exp_ratio, bleu")


def estimate(spec: Estimator, sums: np.ndarray, n: int) -> np.ndarray:
    """The metric from column sums (`[..., k]`, columns in `estimator_columns` order) of `n` items.

    >>> float(estimate({"stat": "exp_ratio", "num": "l", "den": "t"}, np.array([0.0, 4.0]), 2))
    1.0
    """
    sums = np.asarray(sums, dtype=float)
    stat = spec["stat"]
    if stat == "mean":
        return sums[..., 0] / max(1, n)
    if stat in ("ratio", "exp_ratio"):
        ratio = sums[..., 0] / np.maximum(sums[..., 1], 1e-300)
        return np.exp(ratio) if stat == "exp_ratio" else ratio
    return _bleu(sums, int(spec.get("n_gram", 4)))


def _bleu(sums: np.ndarray, n_gram: int) -> np.ndarray:
    """Corpus BLEU (uniform weights, no smoothing) from summed n-gram matches/totals and lengths."""
    match, total = sums[..., :n_gram], sums[..., n_gram : 2 * n_gram]
    hyp, ref = sums[..., 2 * n_gram], sums[..., 2 * n_gram + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        geometric = np.exp(np.mean(np.log(match / total), axis=-1))
        brevity = np.where(hyp > ref, 1.0, np.exp(1 - ref / hyp))
        score = brevity * geometric
    return np.where(match.min(axis=-1) == 0, 0.0, score)


def improvement(base: np.ndarray, tuned: np.ndarray, lower_is_better: bool) -> np.ndarray:
    """Signed change, positive = better: `tuned - base`, or `(base - tuned) / base` for losses."""
    base, tuned = np.asarray(base, dtype=float), np.asarray(tuned, dtype=float)
    if not lower_is_better:
        return tuned - base
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(base != 0, (base - tuned) / np.where(base != 0, base, 1.0), 0.0)


def paired_arrays(
    base_rows: Sequence[Mapping[str, Any]], tuned_rows: Sequence[Mapping[str, Any]], columns: list[str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Ids scored on both models with every column, and those columns (`n x k`) for base and tuned."""
    tuned = {r["id"]: r for r in tuned_rows if all(c in r for c in columns)}
    pairs = [
        (r["id"], r, tuned[r["id"]]) for r in base_rows if r["id"] in tuned and all(c in r for c in columns)
    ]
    shape = (len(pairs), len(columns))
    xb = np.array([[float(b[c]) for c in columns] for _, b, _ in pairs], dtype=float).reshape(shape)
    xt = np.array([[float(t[c]) for c in columns] for _, _, t in pairs], dtype=float).reshape(shape)
    return [i for i, _, _ in pairs], xb, xt


def _rng(seed: int, ids: Sequence[str], purpose: str) -> np.random.Generator:
    """A generator seeded by `seed`, the item ids and the purpose (`boot` or `perm`)."""
    digest = hashlib.sha256("\n".join([purpose, *ids]).encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def _blocks(rows: int, n: int) -> Iterator[int]:
    """Sizes of row blocks of an `rows x n` matrix that keep each block under `_BLOCK` cells."""
    step = max(1, _BLOCK // max(1, n))
    for start in range(0, rows, step):
        yield min(step, rows - start)


def bootstrap_sums(
    xb: np.ndarray, xt: np.ndarray, n_boot: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Column sums (`n_boot x k`) of paired bootstrap resamples: the same items drawn for base and tuned."""
    n = len(xb)
    out_b, out_t = [], []
    for size in _blocks(n_boot, n):
        draws = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
        counts = np.bincount(draws.ravel(), minlength=size * n).reshape(size, n).astype(float)
        out_b.append(counts @ xb)
        out_t.append(counts @ xt)
    return np.concatenate(out_b), np.concatenate(out_t)


def mcnemar_p(base: np.ndarray, tuned: np.ndarray) -> float:
    """Exact two-sided McNemar p-value of paired 0/1 outcomes (binomial test on the discordant pairs).

    >>> mcnemar_p(np.array([1, 1, 0, 1]), np.array([1, 1, 0, 1]))
    1.0
    """
    lost = int(np.sum((base == 1) & (tuned == 0)))
    gained = int(np.sum((base == 0) & (tuned == 1)))
    if lost + gained == 0:
        return 1.0
    return float(binomtest(lost, lost + gained, 0.5).pvalue)


def permutation_p(
    spec: Estimator, xb: np.ndarray, xt: np.ndarray, n_perm: int, rng: np.random.Generator
) -> float:
    """Two-sided p-value of `metric(tuned) - metric(base)` under base/tuned swaps per item: exact over all
    2^n swaps when that is at most `n_perm`, else `n_perm` random swaps ((hits + 1) / (n_perm + 1))."""
    n = len(xb)
    total_b, total_t, diff = xb.sum(0), xt.sum(0), xt - xb
    observed = abs(float(estimate(spec, total_t, n) - estimate(spec, total_b, n)))
    tolerance = 1e-9 * max(1.0, observed)
    exact = n <= 20 and 2**n <= n_perm
    hits = 0
    for start, size in _offsets(2**n if exact else n_perm, n):
        if exact:
            masks = (np.arange(start, start + size)[:, None] >> np.arange(n)) & 1
        else:
            masks = rng.integers(0, 2, size=(size, n))
        shift = masks.astype(float) @ diff
        swapped = estimate(spec, total_t - shift, n) - estimate(spec, total_b + shift, n)
        hits += int(np.sum(np.abs(swapped) >= observed - tolerance))
    return hits / 2**n if exact else (hits + 1) / (n_perm + 1)


def _offsets(rows: int, n: int) -> Iterator[tuple[int, int]]:
    """(start, size) of the row blocks of `_blocks`."""
    start = 0
    for size in _blocks(rows, n):
        yield start, size
        start += size


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (same order as given).

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    m = len(pvalues)
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: pvalues[j])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = round(running, 12)
    return adjusted


def exact_floor(n: int, alpha: float = 0.05) -> float:
    """Smallest change an exact McNemar test can call significant on n items: k/n, where k discordant
    pairs all in one direction are the fewest with p < alpha (k = 6 at alpha 0.05).

    >>> exact_floor(10)
    0.6
    """
    k = 1
    while 2 * 0.5**k >= alpha:
        k += 1
    return k / max(1, n)


def min_detectable_effect(
    n: int, p_base: float, alpha: float = 0.05, power: float = 0.8, discordance: float | None = None
) -> float:
    """The smallest change of a 0/1 score that a paired test on n items detects with `power` at `alpha`.

    Connor's (1987) McNemar power approximation, `n d^2 = (z_a sqrt(psi) + z_b sqrt(psi - d^2))^2`, solved
    for d, where psi is the fraction of items whose outcome differs between the models. By default psi =
    2 p (1 - p): the tuned model's errors independent of the base's, the worst case for a paired test (as
    for two independent samples); models that agree on most items have smaller psi and detect smaller
    changes. Never below `exact_floor(n, alpha)`; 1 or more means nothing is detectable.

    >>> round(min_detectable_effect(100, 0.5), 3)
    0.196
    """
    psi = 2 * p_base * (1 - p_base) if discordance is None else discordance
    floor = exact_floor(n, alpha)
    za, zb = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    if psi <= 0:
        return floor

    def excess(d: float) -> float:
        return math.sqrt(n) * d - za * math.sqrt(psi) - zb * math.sqrt(max(0.0, psi - d * d))

    lo, hi = 0.0, math.sqrt(psi)
    if excess(hi) < 0:  # n < z_a^2: not even a change of every discordant item is detectable
        return max(floor, 1.0)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if excess(mid) < 0 else (lo, mid)
    return max(floor, hi)


def mde_table(ns: Sequence[int], p_bases: Sequence[float], alpha: float = 0.05, power: float = 0.8) -> str:
    """A Markdown table of `min_detectable_effect` for each n (rows) and base score (columns)."""
    head = "| n items | " + " | ".join(f"base {p:g}" for p in p_bases) + " |"
    lines = [head, "|---:|" + "---:|" * len(p_bases)]
    for n in ns:
        cells = [f"{min_detectable_effect(n, p, alpha, power):.3f}" for p in p_bases]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class MetricStats:
    """The paired comparison of one metric (improvement units: positive = better).

    Attributes:
        n: items scored on both models.
        ci_lo / ci_hi: percentile bootstrap interval of the improvement at level 1 - alpha.
        p: two-sided p-value (not yet corrected for multiple metrics).
        mde: minimum detectable effect at this n (power `power`, level alpha).
        test: `mcnemar` (0/1 items) or `permutation`.
        replicates: bootstrap improvements, for joint intervals of summaries (not saved).
    """

    n: int
    ci_lo: float
    ci_hi: float
    p: float
    mde: float
    test: str
    replicates: np.ndarray = dataclasses.field(repr=False, compare=False)


def compare_metric(
    spec: Estimator,
    base_rows: Sequence[Mapping[str, Any]],
    tuned_rows: Sequence[Mapping[str, Any]],
    lower_is_better: bool,
    config: StatsConfig = StatsConfig(),
) -> MetricStats | None:
    """Paired CI, p-value and MDE of one metric's improvement; None when no item is scored on both."""
    ids, xb, xt = paired_arrays(base_rows, tuned_rows, estimator_columns(spec))
    n = len(ids)
    if n == 0:
        return None
    boot_b, boot_t = bootstrap_sums(xb, xt, config.n_boot, _rng(config.seed, ids, "boot"))
    est_b = estimate(spec, boot_b, n)
    replicates = improvement(est_b, estimate(spec, boot_t, n), lower_is_better)
    lo, hi = np.quantile(replicates, [config.alpha / 2, 1 - config.alpha / 2])
    binary = spec["stat"] == "mean" and bool(np.isin(xb, (0, 1)).all() and np.isin(xt, (0, 1)).all())
    if binary:
        p = mcnemar_p(xb[:, 0], xt[:, 0])
        mde = min_detectable_effect(n, float(xb.mean()), config.alpha, config.power)
    else:
        p = permutation_p(spec, xb, xt, config.n_boot, _rng(config.seed, ids, "perm"))
        # the paired design's own standard error: the bootstrap spread of the improvement itself
        se = float(np.std(replicates))
        z = NormalDist().inv_cdf(1 - config.alpha / 2) + NormalDist().inv_cdf(config.power)
        mde = z * se
    test = "mcnemar" if binary else "permutation"
    return MetricStats(n, float(lo), float(hi), float(p), float(mde), test, replicates)


def mean_interval(
    values: Sequence[float], replicates: Sequence[np.ndarray | None], alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile interval of the mean of several improvements by a joint bootstrap.

    Each bootstrap replicate of the mean averages the metrics' replicates (metrics on the same items
    share resamples; different suites are resampled independently); a metric without replicates enters
    as its constant value. With no replicates at all the interval is the mean itself.
    """
    if not values:
        return 0.0, 0.0
    mean = float(np.mean(values))
    if all(r is None for r in replicates):
        return mean, mean
    length = next(len(r) for r in replicates if r is not None)
    stacked = np.stack(
        [np.full(length, v) if r is None else r for v, r in zip(values, replicates, strict=True)]
    )
    lo, hi = np.quantile(stacked.mean(axis=0), [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)
