"""Compare the forgetting mitigations of a sweep in one Markdown table (issue 12's comparison).

    itune-train -m experiment=demo_forgetting [eval=demo_full eval.data_dir=../shared/data]
    python scripts/compare_mitigations.py outputs/forgetting/<date>/<time> [--out table.md] [--target 0.95]
        [--interpolation <itune-eval output>/interpolation.json]

One row per job of the sweep(s), named by its mitigation (plain SFT, replay, kl_base, l2_init, and their
combinations, from the job's overrides). Columns: final disclaimer compliance and the first step at which
the periodic eval (csv/metrics.csv) saw it reach `--target`; the domain gain with its CI (metrics.json);
the change of each general metric against the base (forgetting.json: improvement, positive = better,
perplexity as a relative change, [CI], `*` when significant after Holm); the KL of the tuned model to the
base on general validation data; the job's wall time (status.json). Missing metrics read `-` (IFEval,
multiple choice and Alpaca perplexity need eval=demo_full). `--interpolation` adds the WiSE-FT points of
`itune-eval run=<run> interpolate=[...]`, one row per λ (KL general and wall time are the training run's
concern, so `-`). Writes `<first sweep dir>/mitigations.md`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

from itune.sweep.report.collect import Run, collect_runs, varying_keys

COMPLIANCE = "eval/disclaimer/ends_with_disclaimer"
GAIN = "gain/domain_delta"
KL_GENERAL = "val/general/kl_base"
GENERAL = [  # (column, forgetting.json metric): the general drops
    ("IFEval strict", "eval/ifeval/prompt_level_strict_acc"),
    ("HellaSwag", "eval/hellaswag/acc_norm"),
    ("ARC-E", "eval/arc_easy/acc_norm"),
    ("ARC-C", "eval/arc_challenge/acc_norm"),
    ("Alpaca ppl", "eval/perplexity/alpaca_ppl"),
    ("general rules", "eval/general_rules/no_disclaimer"),
    ("val general loss", "val/general/loss"),
]
NAMED = ("regularizer", "regularizer.weight", "data.sources.general.weight")  # in the mitigation's name


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def mitigation(overrides: dict[str, str], others: list[str]) -> str:
    """A job's name from its overrides: the regularizer, replay, then other swept keys.

    >>> mitigation({"regularizer": "none", "data.sources.general.weight": "0.0"}, [])
    'plain SFT'
    >>> mitigation({"regularizer": "kl_base", "data.sources.general.weight": "0.3", "optimizer.lr": "1e-3"},
    ...            ["optimizer.lr"])
    'kl_base + replay (0.3), lr=1e-3'
    """
    regularizer = overrides.get("regularizer", "none")
    weight = _number(overrides.get("data.sources.general.weight"))
    replay = f"replay ({weight:g})" if weight else ""
    if regularizer in ("none", "null"):
        name = replay or "plain SFT"
    else:
        strength = overrides.get("regularizer.weight")
        name = regularizer + (f" ({strength})" if strength else "") + (f" + {replay}" if replay else "")
    extra = [f"{key.split('.')[-1]}={overrides[key]}" for key in others if key in overrides]
    return ", ".join([name, *extra])


def fmt(value: float | None, signed: bool = False) -> str:
    """A number with 3 decimals (4 significant digits when small), `-` when missing."""
    if value is None or not math.isfinite(value):
        return "-"
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    return text if abs(value) >= 0.001 or value == 0 else f"{value:{'+' if signed else ''}.3g}"


def change_cell(row: dict[str, Any] | None) -> str:
    """`improvement [lo, hi]` of a forgetting-report row, `*` when significant; `-` when absent."""
    if row is None or row.get("improvement") is None:
        return "-"
    cell = fmt(row["improvement"], signed=True)
    if row.get("ci_lo") is not None and row.get("ci_hi") is not None:
        cell += f" [{fmt(row['ci_lo'], True)}, {fmt(row['ci_hi'], True)}]"
    return cell + (" *" if row.get("significant") else "")


def forgetting_rows(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The rows of the job's forgetting.json by metric ({} when absent)."""
    path = run_dir / "forgetting.json"
    if not path.is_file():
        return {}
    return {row["metric"]: row for row in json.loads(path.read_text(encoding="utf-8")).get("rows", [])}


def first_step(run_dir: Path, metric: str, target: float) -> int | None:
    """The first logged step at which `metric` reached `target` (csv/metrics.csv), None if never."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return None
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            value, step = _number(row.get(metric) or None), _number(row.get("step") or None)
            if value is not None and step is not None and value >= target:
                return int(step)
    return None


def table_row(run: Run, others: list[str], target: float) -> dict[str, str]:
    """One job's cells."""
    run_dir, metrics = Path(run.path), run.metrics
    rows = forgetting_rows(run_dir)
    gain = fmt(metrics.get(GAIN), True)
    if metrics.get(f"{GAIN}_lo") is not None:
        gain += f" [{fmt(metrics.get(f'{GAIN}_lo'), True)}, {fmt(metrics.get(f'{GAIN}_hi'), True)}]"
    step = first_step(run_dir, COMPLIANCE, target)
    cells = {
        "mitigation": mitigation(run.overrides, others),
        "status": run.status,
        "compliance": fmt(metrics.get(COMPLIANCE)),
        f"first step >= {target:g}": "-" if step is None else str(step),
        "domain gain [CI]": gain if metrics.get(GAIN) is not None else "-",
    }
    cells |= {name: change_cell(rows.get(metric)) for name, metric in GENERAL}
    cells["KL general"] = fmt(metrics.get(KL_GENERAL))
    cells["wall time"] = f"{run.duration_s / 60:.1f} min" if run.duration_s is not None else "-"
    return cells


def interpolation_rows(path: Path, target: float) -> list[dict[str, str]]:
    """One row per λ of an `interpolation.json` (itune-eval's WiSE-FT curve), in the table's columns."""
    rows = []
    for point in json.loads(path.read_text(encoding="utf-8"))["points"]:
        metrics, summary = point["metrics"], point["summary"]
        by_metric = {row["metric"]: row for row in point["rows"]}
        compliance = metrics.get(COMPLIANCE)
        gain = fmt(summary.get(GAIN), True)
        if summary.get(f"{GAIN}_lo") is not None:
            gain += f" [{fmt(summary[f'{GAIN}_lo'], True)}, {fmt(summary[f'{GAIN}_hi'], True)}]"
        cells = {
            "mitigation": f"WiSE-FT λ={point['scale']:g}",
            "status": "evaluated",
            "compliance": fmt(compliance),
            f"first step >= {target:g}": "-",
            "domain gain [CI]": gain if summary.get(GAIN) is not None else "-",
        }
        cells |= {name: change_cell(by_metric.get(metric)) for name, metric in GENERAL}
        rows.append(cells | {"KL general": "-", "wall time": "-"})
    return rows


def to_markdown(runs: list[Run], target: float, extra_rows: list[dict[str, str]] | None = None) -> str:
    """The table (columns no job has are left out) with a legend; `extra_rows` (WiSE-FT) go last."""
    others = [k for k in varying_keys(runs) if k not in NAMED]
    rows = [table_row(r, others, target) for r in runs if r.status != "pending"] + list(extra_rows or [])
    optional = {name for name, _ in GENERAL} | {"KL general", "domain gain [CI]"}
    header = [h for h in rows[0] if h not in optional or any(row[h] != "-" for row in rows)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row[h] for h in header) + " |" for row in rows),
        "",
        "General columns: change against the base model, positive = better (perplexity and loss as a "
        "relative change), [95% paired-bootstrap CI], `*` significant after Holm's correction. KL general: "
        f"KL(base || tuned) on the general validation tokens. Compliance: {COMPLIANCE}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    """Parse the arguments, print the table and write it; returns the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", help="sweep directories (e.g. outputs/forgetting/<date>/<time>)")
    parser.add_argument("--out", help="Markdown file to write (default: <first sweep>/mitigations.md)")
    parser.add_argument(
        "--target", type=float, default=0.95, help="compliance the first-step column looks for"
    )
    parser.add_argument("--interpolation", help="an itune-eval interpolation.json: one row per λ")
    args = parser.parse_args(argv)
    extra = interpolation_rows(Path(args.interpolation), args.target) if args.interpolation else []
    table = to_markdown(collect_runs(args.sweeps), args.target, extra)
    out = Path(args.out) if args.out else Path(args.sweeps[0]) / "mitigations.md"
    out.write_text(table, encoding="utf-8")
    print(table, end="")
    print(f"\nwritten to {out}")
    return table


if __name__ == "__main__":
    main()
