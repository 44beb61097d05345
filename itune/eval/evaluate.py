"""run_eval(cfg): the eval suites on a run directory (tuned vs its base) or on a bare base model, and the
WiSE-FT interpolation curve between them (`interpolate=[...]`)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from itune.eval.forgetting import compare_runs, show_report, write_report
from itune.eval.forgetting_view import plt
from itune.eval.items import write_items
from itune.eval.runner import SuiteScores, base_cache_keys, score_suites
from itune.inference.interpolate import interpolation
from itune.inference.loading import load_model
from itune.model import base_changing_init
from itune.runs.files import (
    EVAL_METRICS_FILE,
    INTERPOLATION_JSON,
    INTERPOLATION_MD,
    INTERPOLATION_PLOT,
    SAMPLES_FILE,
)
from itune.runs.read import run_config

log = logging.getLogger(__name__)
CURVE_KEYS = ("gain/domain_delta", "forgetting/general_delta")  # summary keys drawn with their bounds


def run_eval(cfg: DictConfig) -> dict[str, float]:
    """Evaluate; with a run directory also its base model (cached like training's) and the forgetting report.

    Writes eval_metrics.json, samples.json, items_tuned.jsonl and (with a run directory)
    items_base.jsonl and forgetting.{json,md,png} into `cfg.run_dir`; with `interpolate` also
    interpolation.{json,md,png} (see `interpolation_curve`).
    """
    from itune.config_schema import check_group_keys

    check_group_keys(cfg)  # a misspelt model/eval key fails before anything loads
    out = Path(cfg.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, template = load_model(cfg)
    suite_nodes = cfg.eval.get("suites") or {}
    if not suite_nodes:
        raise ValueError("no eval suites configured; pick eval=demo, general, ifeval or demo_full")
    scales = _scales(cfg.get("interpolate"))
    if scales and not (cfg.get("run") and cfg.eval.get("on_base", True)):
        raise ValueError(
            "interpolate=[...] needs run=<run dir> and eval.on_base=true (it compares with the base)"
        )
    suites = {name: instantiate(node) for name, node in suite_nodes.items()}
    metrics, samples, items = score_suites(suites, model, tokenizer, template)
    all_samples: dict[str, Any] = {"tuned": samples}
    all_items: dict[str, Any] = {"tuned": items}

    if cfg.get("run") and cfg.eval.get("on_base", True):
        run_cfg = run_config(cfg.run)
        base_lm = functools.cache(lambda: instantiate(run_cfg.model.lm).eval())
        base, all_samples["base"], all_items["base"] = _score_base(
            model, base_lm, suites, tokenizer, template, cfg.eval, run_cfg.model
        )
        report = compare_runs(base, metrics, suites, [], cfg.eval, all_items)
        metrics |= {f"base/{k}": v for k, v in base.items()} | report["summary"]
        write_report(report, out)
        show_report(report, all_samples, cfg.eval.get("show_samples", 3))
        if scales:
            _, at = interpolation(model, base_lm)
            points = interpolation_curve(
                at, scales, suites, tokenizer, template, base, all_items["base"], cfg.eval
            )
            metrics |= curve_metrics(points)
            write_curve(out, points)
    write_items(out, all_items)
    (out / EVAL_METRICS_FILE).write_text(json.dumps(dict(sorted(metrics.items())), indent=2) + "\n")
    (out / SAMPLES_FILE).write_text(json.dumps(all_samples, indent=2, ensure_ascii=False) + "\n")
    log.info("eval results in %s", out)
    return metrics


def _score_base(
    model: Any,
    base_lm: Callable[[], Any],
    suites: dict[str, Any],
    tokenizer: Any,
    template: Any,
    eval_cfg: DictConfig,
    model_cfg: DictConfig,
) -> SuiteScores:
    """The suites on the run's base model, cached in `eval.cache_dir` under the same keys as training's."""
    cache_dir = Path(eval_cfg.cache_dir) if eval_cfg.get("cache_dir") else None
    keys = base_cache_keys(
        OmegaConf.to_container(model_cfg, resolve=True),
        template,
        OmegaConf.to_container(eval_cfg.get("suites") or {}, resolve=True),
    )
    # LoRA: the base is the same model without its adapter (unless its init changed the base weights)
    if hasattr(model, "disable_adapter") and not base_changing_init(model):
        context, base_model = model.disable_adapter(), model
    else:  # merged or fully fine-tuned weights: load the base model itself
        context, base_model = contextlib.nullcontext(), base_lm()
    with context:
        return score_suites(suites, base_model, tokenizer, template, cache_dir, keys)


def _scales(value: Any) -> list[float]:
    """The interpolation scales of `interpolate` (a number or a list; None: none).

    >>> _scales([0.5, 1]), _scales(0.25), _scales(None)
    ([0.5, 1.0], [0.25], [])
    """
    if value is None:
        return []
    values = list(value) if isinstance(value, list | tuple) or OmegaConf.is_list(value) else [value]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError) as e:
        raise ValueError(f"interpolate={value!r}: give numbers, e.g. interpolate=[0.25,0.5,0.75,1.0]") from e


def interpolation_curve(
    at: Callable[[float], contextlib.AbstractContextManager[Any]],
    scales: list[float],
    suites: dict[str, Any],
    tokenizer: Any,
    template: Any,
    base: dict[str, float],
    base_items: Mapping[str, Any],
    eval_cfg: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """WiSE-FT: the suites on θ_base + λ·(θ_tuned − θ_base) for each λ in `scales`, each compared with the
    base by the forgetting report's paired statistics (`compare_runs`: improvements with CIs, Holm, summary).

    Args:
        at: `itune.inference.interpolate.interpolation`'s context factory: the model at scale λ inside the
            block.
        base, base_items: the base model's metrics and item scores.

    Returns:
        one point per scale: {"scale", "metrics", "summary", "rows"}.
    """
    points = []
    for scale in scales:
        log.info("interpolation: scale %g", scale)
        with at(scale) as model:
            tuned, _, items = score_suites(suites, model, tokenizer, template)
        report = compare_runs(base, tuned, suites, [], eval_cfg, {"base": base_items, "tuned": items})
        points.append(
            {"scale": scale, "metrics": tuned, "summary": report["summary"], "rows": report["rows"]}
        )
    return points


def curve_metrics(points: list[dict[str, Any]]) -> dict[str, float]:
    """Flat keys for eval_metrics.json: `interpolate/<scale>/<metric or summary key>`."""
    return {
        f"interpolate/{p['scale']:g}/{key}": value
        for p in points
        for key, value in (p["metrics"] | p["summary"]).items()
    }


def curve_markdown(points: list[dict[str, Any]]) -> str:
    """The curve as Markdown: the summary per scale, then each metric's improvement with its CI."""

    def bounded(summary: dict[str, float], key: str) -> str:
        return f"{summary[key]:+.4f} [{summary[f'{key}_lo']:+.4f}, {summary[f'{key}_hi']:+.4f}]"

    lines = [
        "# Interpolation (WiSE-FT): base + λ·(tuned − base)",
        "",
        "λ = 0 is the base model, λ = 1 the tuned one. Improvements over the base are positive when better, "
        "with the forgetting report's paired CIs (see forgetting.md).",
        "",
        "| λ | domain gain [CI] | general change [CI] | regressions |",
        "|---:|---|---|---:|",
    ]
    for p in points:
        s = p["summary"]
        lines.append(
            f"| {p['scale']:g} | {bounded(s, CURVE_KEYS[0])} | {bounded(s, CURVE_KEYS[1])} "
            f"| {s['forgetting/regressions']} |"
        )
    metrics = [r["metric"] for r in points[0]["rows"] if not r["informational"]] if points else []
    lines += ["", "| metric | " + " | ".join(f"λ={p['scale']:g}" for p in points) + " |"]
    lines.append("|---|" + "---|" * len(points))
    for metric in metrics:
        cells = []
        for p in points:
            r = next(r for r in p["rows"] if r["metric"] == metric)
            ci = "" if r["ci_lo"] is None else f" [{r['ci_lo']:+.3f}, {r['ci_hi']:+.3f}]"
            cells.append(f"{r['tuned']:.4f} ({r['improvement']:+.3f}{ci})")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def curve_plot(points: list[dict[str, Any]], path: Path) -> None:
    """Domain gain and general change against λ with their CI bands (left) and against each other
    (right: the gain/forgetting trade-off, each point labelled with its λ)."""
    scales = [p["scale"] for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    styles = zip(CURVE_KEYS, ("tab:blue", "tab:green"), ("domain gain", "general change"), strict=True)
    for key, colour, label in styles:
        values = [p["summary"][key] for p in points]
        left.plot(scales, values, "o-", color=colour, label=label)
        lo, hi = ([p["summary"][f"{key}_{b}"] for p in points] for b in ("lo", "hi"))
        left.fill_between(scales, lo, hi, color=colour, alpha=0.2)
    left.axhline(0, color="black", linewidth=0.8)
    left.set_xlabel("λ (0 = base, 1 = tuned)")
    left.set_ylabel("improvement over base (CI band)")
    left.legend()
    gain = [p["summary"][CURVE_KEYS[0]] for p in points]
    general = [p["summary"][CURVE_KEYS[1]] for p in points]
    right.plot(general, gain, "o-", color="tab:purple")
    for x, y, scale in zip(general, gain, scales, strict=True):
        right.annotate(f"λ={scale:g}", (x, y), textcoords="offset points", xytext=(4, 4))
    right.set_xlabel("general change (negative = forgetting)")
    right.set_ylabel("domain gain")
    fig.suptitle("Interpolation between base and tuned weights (WiSE-FT)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_curve(out: Path, points: list[dict[str, Any]]) -> None:
    """interpolation.json, interpolation.md and interpolation.png in the eval output directory."""
    (out / INTERPOLATION_JSON).write_text(json.dumps({"points": points}, indent=2) + "\n", encoding="utf-8")
    (out / INTERPOLATION_MD).write_text(curve_markdown(points), encoding="utf-8")
    if points:
        curve_plot(points, out / INTERPOLATION_PLOT)
    log.info("interpolation curve: %s", out / INTERPOLATION_MD)
