"""itune-report: aggregate the run directories of one or more sweeps into a table, the Pareto front of
domain gain versus general retention (or, without base evaluation, of validation losses), a recommended
run, plots and a self-contained HTML page.

Rows and statuses: itune.sweep.collect; front, pick and fallbacks: itune.sweep.select; pictures:
itune.sweep.plots. Written once, by `write_report`: report.csv, report.md, report.json, tradeoff.png,
by_<override>.png per numeric swept key, report.html, and experiment/recommended.yaml: the recommended
run's overrides as an experiment, so `itune-train hydra.searchpath=[file://<report dir>]
experiment=recommended` composes its config again (the command is printed and ends report.md).
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import re
import shlex
from collections.abc import Collection, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from itune.sweep.collect import HYDRA_DIR, STATUSES, Run, collect_runs, expected_grid, load_run, varying_keys
from itune.sweep.criterion import Criterion
from itune.sweep.plots import axis_label, fmt, number, plot_by_override, plot_tradeoff, svg_scatter
from itune.sweep.select import Report, build_report, interval, pareto_front, recommend

__all__ = [
    "STATUSES",
    "Report",
    "Run",
    "build_report",
    "collect_runs",
    "expected_grid",
    "load_run",
    "pareto_front",
    "recommend",
    "run_report",
    "varying_keys",
    "write_report",
]

log = logging.getLogger(__name__)
BOUNDS = ("at_least", "at_most")
CI = " CI"  # suffix of the column of a metric's confidence interval
CI_MEANING = "confidence interval of the change against the base (paired bootstrap, eval.stats)"
RECOMMENDED = "recommended"  # experiment=recommended: the file written for the recommended run
NOT_RERUN = ("optuna_trial", "run_dir", "resume", "ckpt_path", "resume_allow_changes")  # where, not what
PRESETS = ("experiment", "hparams_search")  # `_global_` groups: included by path in the experiment file


def with_ci(report: Report) -> set[str]:
    """The axis metrics (x, y) that some run has confidence bounds of: their table cells show the CI."""
    return {k for k in (report.x, report.y) if any(interval(r, k) for r in report.runs)}


def metric_columns(report: Report, keys: Sequence[str]) -> list[str]:
    """The metric columns of a table: each key, followed by `<key> CI` for the keys of `with_ci`."""
    bounded = with_ci(report)
    return [c for k in keys for c in ([k, k + CI] if k in bounded else [k])]


def metric_cells(report: Report, run: Run, keys: Sequence[str]) -> dict[str, str]:
    """The run's metrics as table cells (`metric_columns`); a CI cell reads `[lo, hi]`."""
    cells = {}
    for column in metric_columns(report, keys):
        if column.endswith(CI):
            ci = interval(run, column.removesuffix(CI))
            cells[column] = f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""
        else:
            cells[column] = fmt(run.metrics.get(column))
    return cells


def table_rows(report: Report) -> list[dict[str, str]]:
    """One dict per run: run, status, swept overrides, metrics (CIs of x and y), front, recommended, error."""
    rows = []
    for r in report.runs:
        row = {"run": r.name, "status": r.status}
        row |= {k: r.overrides.get(k, "") for k in report.swept}
        row |= metric_cells(report, r, report.metric_keys)
        row["pareto"] = "yes" if r.name in report.front else ""
        row["recommended"] = "yes" if r.name == report.recommended else ""
        row["error"] = r.error or ""
        rows.append(row)
    return rows


def to_markdown(report: Report) -> str:
    """The table with the criterion, the recommendation and the counts on top."""
    counts = ", ".join(f"{n} {s}" for s, n in report.counts().items() if n)
    lines = [
        "# Sweep report",
        "",
        f"- runs: {len(report.runs)} ({counts})",
        f"- swept: {', '.join(report.swept) or '(nothing varies)'}",
        f"- Pareto front ({_axes(report)}): {', '.join(report.front) or '-'}",
        f"- criterion: {report.criterion}",
        f"- **recommended: {report.recommended or 'none'}** ({report.reason})",
        *[f"- note: {note}" for note in report.notes],
        *[f"- `{k}{CI}`: {CI_MEANING}" for k in sorted(with_ci(report))],
        "",
    ]
    rows = table_rows(report)
    header = list(rows[0]) if rows else ["run"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        cells = [str(row[h]).replace("|", "\\|") for h in header]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _axes(report: Report) -> str:
    return f"{axis_label(report.x)} vs {axis_label(report.y)}"


def to_csv(report: Report) -> str:
    """Every override and every metric of every run (machines read this one)."""
    override_keys = sorted({k for r in report.runs for k in r.overrides})
    metric_keys = sorted({k for r in report.runs for k in r.metrics})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["run", "status", "path", *override_keys, *metric_keys, "pareto", "recommended", "error"])
    for r in report.runs:
        writer.writerow(
            [r.name, r.status, r.path]
            + [r.overrides.get(k, "") for k in override_keys]
            + [r.metrics.get(k, "") for k in metric_keys]
            + [r.name in report.front, r.name == report.recommended, r.error or ""]
        )
    return buf.getvalue()


def to_html(report: Report) -> str:
    """A self-contained page (no external files or scripts): summary, scatter with hover, table."""
    rows = table_rows(report)
    header = list(rows[0]) if rows else []
    body = []
    for row in rows:
        cls = row["status"] + (" pick" if row["recommended"] else "")
        body.append(
            f'<tr class="{cls}">' + "".join(f"<td>{html.escape(str(row[h]))}</td>" for h in header) + "</tr>"
        )
    counts = ", ".join(f"{n} {s}" for s, n in report.counts().items() if n)
    front = html.escape(", ".join(report.front) or "-")
    notes = "".join(f"<li>note: {html.escape(note)}</li>" for note in report.notes)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>itune sweep report</title>
<style>
body {{ font-family: sans-serif; margin: 24px; }} table {{ border-collapse: collapse; font-size: 12px; }}
td, th {{ border: 1px solid #ddd; padding: 3px 6px; }} th {{ background: #f3f3f3; position: sticky; top: 0; }}
tr.failed td {{ background: #fde2e2; }} tr.pruned td {{ color: #777; }}
tr.unfinished td, tr.interrupted td, tr.pending td {{ background: #fff6d5; }}
tr.pick td {{ font-weight: bold; background: #e6f4e6; }} circle:hover {{ fill-opacity: 1; stroke: #000; }}
</style></head><body>
<h1>Sweep report</h1>
<ul>
<li>runs: {len(report.runs)} ({html.escape(counts)})</li>
<li>swept: {html.escape(", ".join(report.swept) or "(nothing varies)")}</li>
<li>Pareto front ({html.escape(_axes(report))}): {front}</li>
<li>criterion: {html.escape(report.criterion)}</li>
<li><b>recommended: {html.escape(report.recommended or "none")}</b> ({html.escape(report.reason)})</li>
{notes}
</ul>
<p>Hover a point for its run, overrides and metrics. Red: the Pareto front; outlined: the recommended run.</p>
{svg_scatter(report)}
<h2>Runs</h2>
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in header)}</tr>
{chr(10).join(body)}
</table></body></html>
"""


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_")


def write_report(report: Report, out: Path, plots: bool = True) -> list[Path]:
    """report.csv/.md/.json (+ tradeoff.png, by_<key>.png, report.html with `plots`); returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.csv", out / "report.md", out / "report.json"]
    written[0].write_text(to_csv(report), encoding="utf-8")
    rerun = recommended_experiment(report, out)
    rerun_line = f"\nRerun the recommended run: `{rerun[1]}`\n" if rerun else ""
    written[1].write_text(to_markdown(report) + rerun_line, encoding="utf-8")
    if rerun:
        written.append(out / "experiment" / f"{RECOMMENDED}.yaml")
        written[-1].parent.mkdir(exist_ok=True)
        written[-1].write_text(rerun[0], encoding="utf-8")
    payload = {k: v for k, v in asdict(report).items() if k != "runs"} | {
        "counts": report.counts(),
        "runs": [asdict(r) for r in report.runs],
    }
    written[2].write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    if plots:
        plot_tradeoff(report, out / "tradeoff.png")
        written.append(out / "tradeoff.png")
        for key in report.swept:
            if all(number(r.overrides.get(key)) is not None for r in report.runs if key in r.overrides):
                plot_by_override(report, key, out / f"by_{_slug(key)}.png")
                written.append(out / f"by_{_slug(key)}.png")
        (out / "report.html").write_text(to_html(report), encoding="utf-8")
        written.append(out / "report.html")
    return written


def show(report: Report) -> None:
    """The table (swept keys and summary metrics, short headers) and the recommendation (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 140))
    table = Table(title=f"itune-report: {len(report.runs)} runs")
    metric_keys = [k for k in report.metric_keys if not k.startswith("eval/")]  # all of them: report.md
    swept = [k.split(".")[-1] for k in report.swept]
    for header in ["run", "status", *swept, *metric_columns(report, metric_keys), "front", "pick"]:
        table.add_column(header, overflow="fold")
    styles = {
        "failed": "red",
        "pruned": "dim",
        "interrupted": "yellow",
        "unfinished": "yellow",
        "pending": "yellow",
    }
    for r in report.runs:
        cells = [r.name, r.status, *[r.overrides.get(k, "") for k in report.swept]]
        cells += list(metric_cells(report, r, metric_keys).values())
        cells += ["yes" if r.name in report.front else "", "*" if r.name == report.recommended else ""]
        table.add_row(*cells, style="bold green" if r.name == report.recommended else styles.get(r.status))
    console.print(table)
    for r in report.runs:
        if r.error:
            console.print(f"[red]{r.name} {r.status}:[/red] {r.error}")
    console.print(f"Pareto front ({_axes(report)}): {', '.join(report.front) or '-'}")
    console.print(f"[bold]recommended: {report.recommended or 'none'}[/bold] ({report.reason})")
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


def run_report(cfg: Any) -> Path:
    """itune-report: collect, build, write and show the report of `cfg.sweeps`; returns the output dir."""
    sweeps = list(cfg.sweeps or [])
    if not sweeps:
        raise ValueError(
            "no sweep directory given: itune-report outputs/multirun/<date>/<time> [more dirs...]"
        )
    runs = collect_runs(sweeps)
    criterion = Criterion.parse(criterion_spec(_plain(cfg.criterion), _task_overrides()))
    report = build_report(runs, criterion, cfg.x, cfg.y, list(cfg.metrics) if cfg.metrics else None)
    if cfg.out:
        out = Path(cfg.out)
    elif len(sweeps) == 1:
        out = Path(sweeps[0]) / "report"
    else:
        import time

        out = Path("outputs/report") / time.strftime("%Y-%m-%d/%H-%M-%S")
    write_report(report, out)
    show(report)
    rerun = recommended_experiment(report, out)
    if rerun:
        from rich.console import Console
        from rich.markup import escape

        Console(width=1000).print(
            f"rerun the recommended run: [bold]{escape(rerun[1])}[/bold]", highlight=False
        )
    log.info("report written to %s (open report.html for hover details)", out)
    return out


def experiment_config(overrides: Sequence[str], groups: Collection[str]) -> tuple[dict[str, Any], list[str]]:
    """(an experiment config that composes like the command-line `overrides`, the overrides it cannot hold).

    Presets (`experiment=`, `hparams_search=`) are included by path, other groups overridden after them
    (so they win, as on the command line), values set; `optuna_trial`, `run_dir` and resume keys are left
    out; deletions (`~key`) and packaged overrides stay on the command line. `groups`: the run's group names.

    >>> experiment_config(["experiment=demo", "model=tiny", "optimizer.lr=1e-3", "~logger.csv"],
    ...                   {"experiment", "model"})
    ({'defaults': ['/experiment/demo', {'override /model': 'tiny'}, '_self_'], 'optimizer': {'lr': 0.001}}, \
['~logger.csv'])
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    includes: list[Any] = []
    replaced: list[Any] = []
    values: dict[str, Any] = {}
    left: list[str] = []
    for raw, o in zip(overrides, OverridesParser.create().parse_overrides(list(overrides)), strict=True):
        key = o.key_or_group
        if key in NOT_RERUN:
            continue
        if o.is_delete() or o.package or (key in groups and o.is_add()):
            left.append(raw)
        elif key in groups and o.value() is not None:
            preset = key in PRESETS
            (includes if preset else replaced).append(
                f"/{key}/{o.value()}" if preset else {f"override /{key}": o.value()}
            )
        elif key not in groups:
            node = values
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = o.value()
    return {"defaults": [*includes, *replaced, "_self_"], **values}, left


def _quote_path(path: str) -> str:
    return path if re.fullmatch(r"[\w/.:\-]+", path) else "'" + path.replace("'", "\\'") + "'"


def _run_hydra(run: Run) -> tuple[list[str], dict[str, Any]] | None:
    """(a run's command-line overrides, its `hydra` node) from its `.hydra/`; None when a file is missing."""
    hydra_dir = Path(run.path) / HYDRA_DIR
    if not (hydra_dir / "hydra.yaml").is_file() or not (hydra_dir / "overrides.yaml").is_file():
        return None
    overrides = yaml.safe_load((hydra_dir / "overrides.yaml").read_text(encoding="utf-8")) or []
    hydra = (yaml.safe_load((hydra_dir / "hydra.yaml").read_text(encoding="utf-8")) or {}).get("hydra")
    return [str(o) for o in overrides], hydra or {}


def recommended_experiment(report: Report, out: Path) -> tuple[str, str] | None:
    """(the text of `<out>/experiment/recommended.yaml`, the command that runs it) for the recommended run;
    None when there is none or its `.hydra/` files are missing. The run's own search path is kept."""
    run = next((r for r in report.runs if r.name == report.recommended), None)
    found = _run_hydra(run) if run else None
    if run is None or found is None:
        return None
    overrides, hydra = found
    config, left = experiment_config(overrides, set((hydra.get("runtime") or {}).get("choices") or {}))
    paths = [*map(str, hydra.get("searchpath") or []), f"file://{out.resolve()}"]
    searchpath = f"hydra.searchpath=[{','.join(_quote_path(p) for p in paths)}]"
    searchpath = f'"{searchpath}"' if "'" in searchpath else searchpath  # quoted for the shell too
    command = " ".join(["itune-train", searchpath, f"experiment={RECOMMENDED}", *map(shlex.quote, left)])
    kept = [o for o in overrides if o.split("=")[0].lstrip("+~") not in NOT_RERUN]
    header = (
        f"# @package _global_\n# {command}\n"
        f"# The run itune-report recommends, {run.name} ({run.path}), as an experiment: the config of\n"
        f"#   itune-train {' '.join(kept)}\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False), command


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


def _task_overrides() -> list[str]:
    """The command line's overrides (none outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _plain(node: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node
