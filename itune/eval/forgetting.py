"""The forgetting report: every metric on the base and the tuned model, the change, and regressions.

Improvement is signed so that positive is better: `tuned - base` for scores (accuracy, pass rates,
ROUGE), and the relative drop `(base - tuned) / base` for losses and perplexities. Each metric belongs
to a kind, `domain` (what the run should teach) or `general` (what it must not forget). Metrics with
per-item scores get paired statistics (`itune.eval.stats`): n, a bootstrap CI of the improvement, a
p-value and the minimum detectable effect. p-values are Holm-corrected within each kind; a metric is a
**regression** only when its improvement is below `-threshold` *and* its corrected p is below `alpha`.
Metrics without items (`val/<source>/loss`, from Lightning) keep a row without CI and are never flagged;
`val/<source>/kl_base` rows (KL of the tuned model to the base, 0 for the base) are informational.
The summary keys go to metrics.json so sweeps can optimise on them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from itune.eval.forgetting_view import plot, show_report, to_markdown
from itune.eval.items import ItemScores, write_items
from itune.eval.runner import metric_kinds
from itune.eval.stats import MetricStats, StatsConfig, compare_metric, holm, mean_interval
from itune.runs.files import FORGETTING_JSON, FORGETTING_MD, FORGETTING_PLOT

__all__ = ["build_report", "compare_runs", "improvement", "show_report", "to_markdown", "write_report"]
LOWER_IS_BETTER = ("loss", "ppl")
KL_SUFFIX = "/kl_base"
SuiteItems = Mapping[str, ItemScores | None]


def improvement(metric: str, base: float, tuned: float) -> float:
    """Signed change, positive = better.

    >>> improvement("eval/mc/acc", 0.5, 0.6)
    0.09999999999999998
    >>> improvement("val/general/loss", 2.0, 2.5)
    -0.25
    """
    if metric.endswith(LOWER_IS_BETTER):
        return (base - tuned) / base if base else 0.0
    return tuned - base


def metric_stats(metric: str, items: Mapping[str, SuiteItems], config: StatsConfig) -> MetricStats | None:
    """Paired statistics of `eval/<suite>/<name>` from the base and tuned item scores, if both have them."""
    parts = metric.split("/")
    if parts[0] != "eval" or len(parts) < 3:
        return None
    base, tuned = (items.get(model, {}).get(parts[1]) for model in ("base", "tuned"))
    spec = tuned["estimators"].get("/".join(parts[2:])) if base and tuned else None
    if spec is None:
        return None
    return compare_metric(spec, base["rows"], tuned["rows"], metric.endswith(LOWER_IS_BETTER), config)


def _row(metric: str, kind: str, base: float, tuned: float, limit: float, st: MetricStats | None) -> dict:
    """One report row (statistics `None` where the metric has no items)."""
    return {
        "metric": metric,
        "kind": kind,
        "base": base,
        "tuned": tuned,
        "delta": tuned - base,
        "improvement": improvement(metric, base, tuned),
        "threshold": limit,
        "n": st.n if st else None,
        "ci_lo": st.ci_lo if st else None,
        "ci_hi": st.ci_hi if st else None,
        "p": st.p if st else None,
        "p_adj": None,
        "mde": st.mde if st else None,
        "test": st.test if st else None,
        "significant": False,
        "regression": False,
        "informational": False,
    }


def _kl_row(metric: str, kind: str, value: float) -> dict:
    """An informational row: the tuned model's KL to the base (the base's own KL is 0)."""
    row = _row(metric, kind, 0.0, value, 0.0, None)
    return row | {"improvement": None, "informational": True}


def flag(rows: list[dict[str, Any]], alpha: float) -> None:
    """Holm-correct the p-values within each kind, then mark significant rows and regressions."""
    for kind in {r["kind"] for r in rows}:
        tested = [r for r in rows if r["kind"] == kind and r["p"] is not None and not r["informational"]]
        for r, p_adj in zip(tested, holm([r["p"] for r in tested]), strict=True):
            r["p_adj"] = p_adj
            r["significant"] = p_adj < alpha
            r["regression"] = r["significant"] and r["improvement"] < -r["threshold"]


def summarize(
    rows: list[dict[str, Any]], replicates: dict[str, np.ndarray], alpha: float
) -> dict[str, float]:
    """Summary keys: mean improvements with joint-bootstrap bounds, regression counts, KL to the base."""
    summary: dict[str, float] = {}
    for kind, key in (("domain", "gain/domain_delta"), ("general", "forgetting/general_delta")):
        chosen = [r for r in rows if r["kind"] == kind and not r["informational"]]
        values = [r["improvement"] for r in chosen]
        lo, hi = mean_interval(values, [replicates.get(r["metric"]) for r in chosen], alpha)
        mean = float(np.mean(values)) if values else 0.0
        summary |= {key: mean, f"{key}_lo": lo, f"{key}_hi": hi}
    summary["forgetting/regressions"] = sum(r["regression"] for r in rows)
    summary["forgetting/significant_regressions"] = sum(
        r["kind"] == "general" and r["significant"] and r["improvement"] < 0 for r in rows
    )
    kl = [r["tuned"] for r in rows if r["informational"] and r["kind"] == "general"]
    if kl:
        summary["forgetting/kl_general"] = float(np.mean(kl))
    return summary


def build_report(
    base: dict[str, float],
    tuned: dict[str, float],
    kinds: dict[str, str],
    threshold: float = 0.02,
    thresholds: dict[str, float] | None = None,
    items: Mapping[str, SuiteItems] | None = None,
    stats: StatsConfig | None = None,
) -> dict[str, Any]:
    """Rows for every metric measured on both models (and every `val/<source>/kl_base`), and the summary.

    Args:
        base / tuned: metrics of the base and the tuned model, same keys.
        kinds: metric → `domain` or `general` (metrics not listed count as general).
        threshold: a significant drop larger than this (in improvement units) is a regression.
        thresholds: per-metric thresholds that replace `threshold`.
        items: {"base": {suite: ItemScores}, "tuned": {...}}; metrics without items get no statistics.
        stats: bootstrap/permutation settings (`eval.stats`).
    """
    config, items = stats or StatsConfig(), items or {}
    rows, replicates = [], {}
    for metric in sorted(set(base) & set(tuned) - {k for k in tuned if k.endswith(KL_SUFFIX)}):
        st = metric_stats(metric, items, config)
        if st is not None:
            replicates[metric] = st.replicates
        limit = (thresholds or {}).get(metric, threshold)
        rows.append(_row(metric, kinds.get(metric, "general"), base[metric], tuned[metric], limit, st))
    flag(rows, config.alpha)
    rows += [
        _kl_row(k, kinds.get(k, "general"), v) for k, v in sorted(tuned.items()) if k.endswith(KL_SUFFIX)
    ]
    suites = {  # how each metric is computed from the columns of the item files, and the prompt format
        name: scores["meta"] | {"estimators": scores["estimators"]}
        for name, scores in items.get("tuned", {}).items()
        if scores
    }
    return {
        "rows": rows,
        "summary": summarize(rows, replicates, config.alpha),
        "suites": suites,
        "stats": dataclasses.asdict(config) | {"holm": "within each kind"},
    }


def compare_runs(
    base: dict[str, float],
    tuned: dict[str, float],
    suites: dict[str, Any],
    source_names: list[str],
    eval_cfg: Mapping[str, Any],
    items: Mapping[str, SuiteItems] | None = None,
) -> dict[str, Any]:
    """The report for a run: suite metrics take their suite's kind; `val/<source>/loss` and
    `val/<source>/kl_base` are general for the sources in `eval_cfg.general_sources` and domain otherwise;
    thresholds and `eval_cfg.stats` from `eval_cfg`; `items` as in `build_report`."""
    general = set(eval_cfg.get("general_sources") or [])
    kinds = metric_kinds(suites, tuned)
    sources = set(source_names) | {
        k.split("/")[1] for k in tuned if k.startswith("val/") and k.count("/") == 2
    }
    for s in sources:
        kinds |= {f"val/{s}/{m}": "general" if s in general else "domain" for m in ("loss", "kl_base")}
    compared = {k: tuned[k] for k in base if k in tuned and k not in ("val/loss", "val/kl_base")}
    compared |= {
        k: v for k, v in tuned.items() if k.startswith("val/") and k.endswith(KL_SUFFIX) and k.count("/") == 2
    }
    return build_report(
        base,
        compared,
        kinds,
        eval_cfg.get("threshold", 0.02),
        eval_cfg.get("thresholds"),
        items,
        StatsConfig.from_cfg(eval_cfg.get("stats")),
    )


def write_report(
    report: dict[str, Any], run_dir: Path, items: Mapping[str, SuiteItems] | None = None
) -> None:
    """forgetting.json, forgetting.md, forgetting.png and the item files (`items`) in the run directory
    (report first, then the directory, as `itune.sweep.report.write_report`)."""
    if items:
        write_items(run_dir, items)
    (run_dir / FORGETTING_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (run_dir / FORGETTING_MD).write_text(to_markdown(report), encoding="utf-8")
    if report["rows"]:
        plot(report, run_dir / FORGETTING_PLOT)
