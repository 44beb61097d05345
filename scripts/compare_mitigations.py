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
concern, so `-`).

Several seeds of the same mitigations (sweeps run with `seed=1`, `seed=2`, ... given together) add two tables:
across seeds, one row per mitigation with its general drops at the stop (Alpaca perplexity's rise, the leak
rule's fall, the general KL), each as the mean with a 95% t-interval over the seeds, and the same paired by
seed with plain SFT (the difference, its interval, and how much of plain SFT's drop is removed); and the
general KL at each periodic eval (matched steps, mean over the seeds that got there). Writes
`<first sweep dir>/mitigations.md`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

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
SEED_DROPS = [("Alpaca ppl", "eval/perplexity/alpaca_ppl"), ("leak rule", "eval/general_rules/no_disclaimer")]
NAMED = ("regularizer", "regularizer.weight", "data.sources.general.weight")  # in the mitigation's name


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def short(value: str) -> str:
    """A swept value for a name: numbers to 3 significant digits, other text as it is.

    >>> short("0.0027464363002855097"), short("1e-3"), short("kl_base")
    ('0.00275', '0.001', 'kl_base')
    """
    number = _number(value)
    return value if number is None else f"{number:.3g}"


def mitigation(overrides: dict[str, str], others: list[str]) -> str:
    """A job's name from its overrides: the regularizer, replay, then other swept keys.

    >>> mitigation({"regularizer": "none", "data.sources.general.weight": "0.0"}, [])
    'plain SFT'
    >>> mitigation({"regularizer": "kl_base", "data.sources.general.weight": "0.3", "optimizer.lr": "1e-3"},
    ...            ["optimizer.lr"])
    'kl_base + replay (0.3), lr=0.001'
    """
    regularizer = overrides.get("regularizer", "none")
    weight = _number(overrides.get("data.sources.general.weight"))
    replay = f"replay ({weight:.3g})" if weight else ""
    if regularizer in ("none", "null"):
        name = replay or "plain SFT"
    else:
        strength = overrides.get("regularizer.weight")
        name = regularizer + (f" ({short(strength)})" if strength else "")
        name += f" + {replay}" if replay else ""
    extra = [f"{key.split('.')[-1]}={short(overrides[key])}" for key in others if key in overrides]
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


def seed_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean and its 95% t-interval over seeds (lo = hi = mean for one value).

    >>> [round(v, 3) for v in seed_interval([1.0, 2.0, 3.0])]
    [2.0, -0.484, 4.484]
    """
    a = np.asarray(values, dtype=float)
    mean = float(a.mean())
    if len(a) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return mean, mean - half, mean + half


def interval_cell(values: list[float], mark: bool = False) -> str:
    """`mean [lo, hi]` over seeds (`n=1` when one), `*` when `mark` and the interval excludes 0."""
    if not values:
        return "-"
    mean, lo, hi = seed_interval(values)
    if len(values) == 1:
        return f"{fmt(mean, True)} (n=1)"
    star = " *" if mark and (lo > 0 or hi < 0) else ""
    return f"{fmt(mean, True)} [{fmt(lo, True)}, {fmt(hi, True)}]{star}"


def seed_measures(run: Run) -> dict[str, float]:
    """The job's general drops at its stop, positive = worse: Alpaca perplexity's relative rise, the leak
    rule's fall and the KL to the base on general validation tokens (absent ones left out)."""
    rows = forgetting_rows(Path(run.path))
    changes = {name: rows.get(metric, {}).get("improvement") for name, metric in SEED_DROPS}
    drops = {name: -v for name, v in changes.items() if v is not None}
    kl = run.metrics.get(KL_GENERAL)
    return drops | ({"KL general": kl} if kl is not None else {})


def seed_groups(runs: list[Run], others: list[str]) -> dict[str, dict[str, Run]]:
    """Completed jobs by mitigation (the name without the seed), then by seed (`default` when not set)."""
    groups: dict[str, dict[str, Run]] = {}
    for run in runs:
        if run.status == "completed":
            name = mitigation(run.overrides, [k for k in others if k != "seed"])
            groups.setdefault(name, {})[run.overrides.get("seed", "default")] = run
    return {name: dict(sorted(by_seed.items())) for name, by_seed in groups.items()}


def plain_name(run: Run, others: list[str]) -> str:
    """The name of the plain SFT job that `run` is compared with: same other overrides, no mitigation."""
    plain = {k: v for k, v in run.overrides.items() if k not in NAMED} | {"regularizer": "none"}
    return mitigation(plain, [k for k in others if k != "seed"])


def removed(arm: list[float], plain: list[float]) -> str:
    """How much of plain SFT's mean drop the arm removes, as a percentage (`-` without a plain drop)."""
    total = sum(plain)
    return "-" if not arm or total <= 0 else f"{1 - sum(arm) / total:+.0%}"


def seeds_rows(groups: dict[str, dict[str, Run]], target: float, others: list[str]) -> list[dict[str, str]]:
    """One row per mitigation: its seeds, how many reached `target`, the steps it took, the general drops
    at the stop (mean [95% t-interval over seeds]) and, paired by seed, their difference to plain SFT."""
    names = [name for name, _ in SEED_DROPS] + ["KL general"]
    measures = {name: {s: seed_measures(r) for s, r in by_seed.items()} for name, by_seed in groups.items()}
    rows = []
    for name, by_seed in groups.items():
        runs = list(by_seed.values())
        reference = plain_name(runs[0], others)
        plain = measures.get(reference, {}) if reference != name else {}
        mine = measures[name]
        steps = [first_step(Path(r.path), COMPLIANCE, target) for r in runs]
        reached = sum((r.metrics.get(COMPLIANCE) or 0.0) >= target for r in runs)
        row = {
            "mitigation": name,
            "seeds": ", ".join(by_seed),
            f"reached {target:g}": f"{reached}/{len(runs)}",
            "steps": ", ".join("-" if s is None else str(s) for s in steps),
        }
        removed_cells = []
        for measure in names:
            values = {s: m[measure] for s, m in mine.items() if measure in m}
            paired = [s for s in values if measure in plain.get(s, {})]
            row[measure] = interval_cell(list(values.values()))
            diffs = [values[s] - plain[s][measure] for s in paired]
            row[f"{measure} - plain SFT"] = interval_cell(diffs, mark=True)
            removed_cells.append(removed([values[s] for s in paired], [plain[s][measure] for s in paired]))
        row["drop removed"] = ", ".join(removed_cells) if plain else "-"
        rows.append(row)
    return rows


def kl_by_step(run_dir: Path) -> dict[int, float]:
    """The general KL measured at each periodic eval's step: the k-th validation after training started is
    paired with the k-th periodic eval (csv/metrics.csv logs the validation one step earlier)."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    validations = [r for r in rows if r.get(KL_GENERAL)]
    if validations and _number(validations[0].get("step")) == 0:  # the validation before the first step
        validations = validations[1:]
    evals = [int(float(r["step"])) for r in rows if r.get(COMPLIANCE) and r.get("step")]
    kls = (_number(r[KL_GENERAL]) for r in validations)
    return {step: kl for step, kl in zip(evals, kls, strict=False) if kl is not None}


def steps_rows(groups: dict[str, dict[str, Run]]) -> list[dict[str, str]]:
    """One row per mitigation: its mean general KL at each periodic eval step, `(n)` when fewer seeds got
    there than the mitigation has (the others stopped at the target before)."""
    curves = {name: [kl_by_step(Path(r.path)) for r in by_seed.values()] for name, by_seed in groups.items()}
    steps = sorted({step for runs in curves.values() for curve in runs for step in curve})
    rows = []
    for name, runs in curves.items():
        row = {"mitigation": name}
        for step in steps:
            values = [curve[step] for curve in runs if step in curve]
            cell = fmt(float(np.mean(values))) if values else "-"
            row[f"step {step}"] = cell + (f" ({len(values)})" if values and len(values) < len(runs) else "")
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, str]], header: list[str] | None = None) -> list[str]:
    """The rows as Markdown table lines, in `header`'s columns (default: the first row's)."""
    header = header or list(rows[0])
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row[h] for h in header) + " |" for row in rows),
    ]


def to_markdown(runs: list[Run], target: float, extra_rows: list[dict[str, str]] | None = None) -> str:
    """The table (columns no job has are left out) with a legend; `extra_rows` (WiSE-FT) go last. With
    several seeds of a mitigation, the across-seeds and matched-steps tables follow."""
    others = [k for k in varying_keys(runs) if k not in NAMED]
    rows = [table_row(r, others, target) for r in runs if r.status != "pending"] + list(extra_rows or [])
    optional = {name for name, _ in GENERAL} | {"KL general", "domain gain [CI]"}
    header = [h for h in rows[0] if h not in optional or any(row[h] != "-" for row in rows)]
    lines = [
        *markdown_table(rows, header),
        "",
        "General columns: change against the base model, positive = better (perplexity and loss as a "
        "relative change), [95% paired-bootstrap CI], `*` significant after Holm's correction. KL general: "
        f"KL(base || tuned) on the general validation tokens. Compliance: {COMPLIANCE}.",
    ]
    groups = seed_groups(runs, others)
    if any(len(by_seed) > 1 for by_seed in groups.values()):
        lines += [
            "",
            f"Across seeds, at the stop (the first periodic eval with compliance >= {target:g}, or the "
            "last):",
            "",
            *markdown_table(seeds_rows(groups, target, others)),
            "",
            "General drops, positive = worse (Alpaca perplexity's relative rise, the leak rule's fall, the "
            "KL): mean over the seeds [95% t-interval over the seeds]; `- plain SFT`: paired by seed, `*` "
            "when the interval excludes 0; drop removed (same order): 1 - the mitigation's mean drop / plain "
            "SFT's on the same seeds.",
            "",
            "General KL at matched steps (mean over the seeds; `(n)`: only n seeds were still training):",
            "",
            *markdown_table(steps_rows(groups)),
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
