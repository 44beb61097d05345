"""itune-report: aggregate the run directories of one or more sweeps into a table, the Pareto front of
domain gain versus general retention (or, without base evaluation, of validation losses), a recommended
run, plots and a self-contained HTML page.

Rows and statuses: collect; front, pick and fallbacks: select; text (Markdown, CSV, console): render;
pictures: plots; report.html: html; the recommended run as an experiment: rerun. Written once, by
`write_report`: report.csv, report.md, report.json, tradeoff.png, by_<override>.png per numeric swept key,
report.html, and experiment/recommended.yaml: the recommended run's overrides as an experiment, so
`itune-train hydra.searchpath=[file://<report dir>] experiment=recommended` composes its config again (the
command is printed and ends report.md). The package imports nothing of the sweep's launcher side (job,
callbacks, Optuna): they import it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from itune.sweep.criterion import Criterion
from itune.sweep.report.collect import (
    STATUSES,
    Run,
    collect_runs,
    expected_grid,
    multirun_config,
    read_run,
    varying_keys,
)
from itune.sweep.report.html import to_html
from itune.sweep.report.plots import number, plot_by_override, plot_tradeoff
from itune.sweep.report.render import show, table_rows, to_csv, to_markdown
from itune.sweep.report.rerun import RECOMMENDED, recommended_experiment
from itune.sweep.report.select import Report, build_report, pareto_front, recommend

__all__ = [
    "RECOMMENDED",
    "STATUSES",
    "Report",
    "Run",
    "build_report",
    "collect_runs",
    "criterion_spec",
    "expected_grid",
    "read_run",
    "pareto_front",
    "recommend",
    "run_report",
    "sweep_objective",
    "table_rows",
    "to_markdown",
    "varying_keys",
    "write_report",
]

log = logging.getLogger(__name__)
BOUNDS = ("at_least", "at_most")


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_")


def write_report(report: Report, out_dir: Path, plots: bool = True) -> list[Path]:
    """report.csv/.md/.json (+ tradeoff.png, by_<key>.png, report.html with `plots`); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "report.csv", out_dir / "report.md", out_dir / "report.json"]
    written[0].write_text(to_csv(report), encoding="utf-8")
    rerun = recommended_experiment(report, out_dir)
    rerun_line = f"\nRerun the recommended run: `{rerun[1]}`\n" if rerun else ""
    written[1].write_text(to_markdown(report) + rerun_line, encoding="utf-8")
    if rerun:
        written.append(out_dir / "experiment" / f"{RECOMMENDED}.yaml")
        written[-1].parent.mkdir(exist_ok=True)
        written[-1].write_text(rerun[0], encoding="utf-8")
    payload = {k: v for k, v in asdict(report).items() if k != "runs"} | {
        "counts": report.counts(),
        "runs": [asdict(r) for r in report.runs],
    }
    written[2].write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    if plots:
        plot_tradeoff(report, out_dir / "tradeoff.png")
        written.append(out_dir / "tradeoff.png")
        for key in report.swept:
            if all(number(r.overrides.get(key)) is not None for r in report.runs if key in r.overrides):
                plot_by_override(report, key, out_dir / f"by_{_slug(key)}.png")
                written.append(out_dir / f"by_{_slug(key)}.png")
        (out_dir / "report.html").write_text(to_html(report), encoding="utf-8")
        written.append(out_dir / "report.html")
    return written


def run_report(cfg: Any) -> Path:
    """itune-report: collect, build, write and show the report of `cfg.sweeps`; returns the output dir."""
    sweeps = list(cfg.sweeps or [])
    if not sweeps:
        raise ValueError(
            "no sweep directory given: itune-report outputs/multirun/<date>/<time> [more dirs...]"
        )
    runs = collect_runs(sweeps)
    overrides = _task_overrides()
    spec = criterion_spec(_plain(cfg.criterion), overrides)
    objective = sweep_objective(sweeps)
    chosen = any(o.lstrip("+~").startswith("criterion") for o in overrides)
    if objective is not None and objective["metric"] != spec.get("metric") and not chosen:
        spec = objective  # the sweep optimised another metric: recommend by its objective
        log.info("recommending by the sweep's optimized_metric: %s", Criterion.parse(spec).describe())
    criterion = Criterion.parse(spec)
    report = build_report(runs, criterion, cfg.x, cfg.y, list(cfg.metrics) if cfg.metrics else None)
    if cfg.out:
        out_dir = Path(cfg.out)
    elif len(sweeps) == 1:
        out_dir = Path(sweeps[0]) / "report"
    else:
        import time

        out_dir = Path("outputs/report") / time.strftime("%Y-%m-%d/%H-%M-%S")
    write_report(report, out_dir)
    show(report)
    rerun = recommended_experiment(report, out_dir)
    if rerun:
        from rich.console import Console
        from rich.markup import escape

        Console(width=1000).print(
            f"rerun the recommended run: [bold]{escape(rerun[1])}[/bold]", highlight=False
        )
    log.info("report written to %s (open report.html for hover details)", out_dir)
    return out_dir


def criterion_spec(spec: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """The criterion config with `criterion.at_least=<dict>` / `at_most=<dict>` overrides as given.

    Hydra merges a dict override into the existing one, so `'criterion.at_least={}'` would keep the
    default budget and `={eval/x: 0.9}` would add to it; here the dict on the command line replaces it.

    >>> criterion_spec({"at_least": {"a": 1.0}}, ["criterion.at_least={}"])
    {'at_least': {}}
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    spec = dict(spec)
    mine = [o for o in overrides if o.lstrip("+").startswith(tuple(f"criterion.{b}=" for b in BOUNDS))]
    for override in OverridesParser.create().parse_overrides(mine):
        value = override.value()
        if isinstance(value, dict):
            spec[override.get_key_element().lstrip("+").removeprefix("criterion.")] = value
    return spec


def sweep_objective(sweeps: Sequence[str | Path]) -> dict[str, Any] | None:
    """The constrained `optimized_metric` ({metric, at_least, …}) that the jobs of every given sweep
    returned to their sweeper (its multirun.yaml), when they share one; None otherwise (a plain metric
    name, several objectives, none, or sweeps that differ)."""
    specs = []
    for sweep in sweeps:
        config = multirun_config(Path(sweep))
        spec = config.get("optimized_metric") if config else None
        if not isinstance(spec, dict) or "metric" not in spec:
            return None
        specs.append({k: v for k, v in spec.items() if k != "penalty"})
    return specs[0] if specs and all(s == specs[0] for s in specs) else None


def _task_overrides() -> list[str]:
    """The command line's overrides (none outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _plain(node: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node
