"""itune-report on synthetic sweep directories: statuses, Pareto front, recommendation, files."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml

from itune.sweep.criterion import (
    Criterion,
    default_criterion,
    metric_direction,
    objective_directions,
    objective_value,
)
from itune.sweep.report import (
    build_report,
    collect_runs,
    criterion_spec,
    pareto_front,
    recommend,
    write_report,
)
from itune.sweep.report.collect import expected_grid
from itune.sweep.report.plots import error_bars, tradeoff_figure

GAIN, RETENTION = "gain/domain_delta", "forgetting/general_delta"
CONF = Path(__file__).resolve().parents[1] / "conf"


def make_job(sweep: Path, num: int, overrides: list[str], metrics: dict | None = None, **status) -> Path:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if status:
        (job / "status.json").write_text(json.dumps(status))
    return job


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A 2x2 grid (lr x weight) with 2 completed jobs, one failed, one unfinished; multirun.yaml lists it."""
    root = tmp_path / "grid"
    root.mkdir()
    multirun = {
        "hydra": {
            "sweeper": {
                "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                "params": None,
            },
            "overrides": {
                "task": ["model=tiny", "optimizer.lr=0.001,0.01", "data.sources.general.weight=0,0.5"]
            },
        }
    }
    (root / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    base = ["model=tiny"]
    make_job(
        root,
        0,
        [*base, "optimizer.lr=0.001", "data.sources.general.weight=0"],
        {GAIN: 0.2, RETENTION: -0.01, "forgetting/regressions": 0},
    )
    make_job(
        root,
        1,
        [*base, "optimizer.lr=0.001", "data.sources.general.weight=0.5"],
        {GAIN: 0.5, RETENTION: -0.2, "forgetting/regressions": 2},
    )
    failed = make_job(
        root,
        2,
        [*base, "optimizer.lr=0.01", "data.sources.general.weight=0"],
        status="failed",
        error="ValueError: boom",
    )
    (failed / "error.txt").write_text("Traceback ...\nValueError: boom\n")
    return root  # job 3 (lr=0.01, weight=0.5) never started


def test_statuses_and_pending_grid_points(sweep):
    runs = collect_runs([sweep])
    by_status = {r.status: r for r in runs}
    assert [r.status for r in runs] == ["completed", "completed", "failed", "pending"]
    assert by_status["failed"].error == "ValueError: boom"
    assert by_status["pending"].overrides == {
        "model": "tiny",
        "optimizer.lr": "0.01",
        "data.sources.general.weight": "0.5",
    }
    make_job(
        sweep, 3, ["model=tiny", "optimizer.lr=0.01", "data.sources.general.weight=0.5"], status="running"
    )
    assert [r.status for r in collect_runs([sweep])] == ["completed", "completed", "failed", "unfinished"]


def test_front_and_recommendation_follow_the_numbers(sweep):
    report = build_report(collect_runs([sweep]), Criterion(GAIN, at_least={RETENTION: -0.05}))
    assert report.swept == ["data.sources.general.weight", "optimizer.lr"]
    assert sorted(report.front) == ["grid/0", "grid/1"]  # neither beats the other on both axes
    assert report.recommended == "grid/0"  # grid/1 gains more but forgets beyond the budget
    loose = build_report(collect_runs([sweep]), Criterion(GAIN, at_least={RETENTION: -0.5}))
    assert loose.recommended == "grid/1"
    none = recommend(collect_runs([sweep]), Criterion(GAIN, at_least={RETENTION: 0.0}))
    assert none[0] is None and "grid/0" in none[1]  # nothing qualifies: the closest is named


def test_pareto_front_drops_dominated_runs(tmp_path):
    root = tmp_path / "s"
    for i, (g, r) in enumerate([(0.1, 0.0), (0.2, 0.1), (0.3, -0.1), (0.2, 0.1)]):
        make_job(root, i, [f"x={i}"], {GAIN: g, RETENTION: r})
    assert sorted(pareto_front(collect_runs([root]))) == ["s/1", "s/2", "s/3"]  # ties stay on the front


def test_write_report_files(sweep, tmp_path):
    report = build_report(collect_runs([sweep]))
    paths = write_report(report, tmp_path / "out")
    names = {p.name for p in paths}
    assert {"report.csv", "report.md", "report.json", "tradeoff.png", "report.html"} <= names
    assert {"by_optimizer_lr.png", "by_data_sources_general_weight.png"} <= names
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| grid/2 | failed |" in md and "ValueError: boom" in md and "pending" in md
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<svg" in html and "<title>grid/0" in html and "<script src" not in html  # self-contained
    csv_lines = (tmp_path / "out" / "report.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 4


def test_objective_values():
    metrics = {GAIN: 0.3, RETENTION: -0.1}
    assert objective_value(metrics, None) is None
    assert objective_value(metrics, GAIN) == 0.3
    assert objective_value(metrics, [GAIN, RETENTION]) == (0.3, -0.1)
    spec = {"metric": GAIN, "at_least": {RETENTION: -0.05}, "penalty": 2.0}
    assert objective_value(metrics, spec) == pytest.approx(0.3 - 2.0 * 0.05)
    with pytest.raises(KeyError, match="eval=demo"):
        objective_value({}, GAIN)
    assert math.isinf(Criterion(GAIN, at_least={"missing": 0}).violation(metrics))


def test_report_cli_accepts_positional_dirs():
    from itune.cli.report import positional_dirs_to_override

    assert positional_dirs_to_override(["a/b", "c", "out=x"]) == ["out=x", "sweeps=['a/b','c']"]
    assert positional_dirs_to_override(["sweeps=[a]"]) == ["sweeps=[a]"]


def loss_sweep(root: Path, general: str = "general", domain: str = "domain") -> Path:
    """An eval=none sweep: only losses in metrics.json. Run 2 has the lowest val/loss, run 0 the highest."""
    losses = [(2.5, 2.0, 3.0), (2.2, 1.6, 2.8), (1.9, 1.5, 2.3), (2.1, 1.7, 2.2)]  # val, domain, general
    for i, (val, dom, gen) in enumerate(losses):
        job = make_job(
            root,
            i,
            [f"optimizer.lr={10 ** -(i + 2)}"],
            {"train/loss": val - 0.3, "val/loss": val, f"val/{domain}/loss": dom, f"val/{general}/loss": gen},
        )
        config = {"eval": {"on_base": False, "general_sources": [general]}, "optimizer": {"lr": 0.1}}
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def test_directions_follow_the_metric():
    lower = ("val/loss", "eval/alpaca/alpaca_ppl", "x/perplexity", "forgetting/regressions")
    assert {metric_direction(k) for k in lower} == {"minimize"}
    assert metric_direction(GAIN) == metric_direction("eval/disclaimer/ends_with_disclaimer") == "maximize"
    assert Criterion.parse({"metric": "val/loss"}).direction == "minimize"  # no direction given
    assert Criterion.parse({"metric": "val/loss", "direction": "maximize"}).direction == "maximize"
    assert objective_directions({"metric": "val/loss", "penalty": 1}) == ["minimize"]
    low = Criterion("val/loss", at_most={"train/loss": 1.0})
    assert low.objective({"val/loss": 2.0, "train/loss": 1.5}, penalty=2.0) == pytest.approx(3.0)  # worse


def test_pareto_front_and_pick_with_losses_minimise(tmp_path):
    runs = collect_runs([loss_sweep(tmp_path / "s")])
    assert sorted(pareto_front(runs, "val/domain/loss", "val/general/loss")) == ["s/2", "s/3"]  # not s/0
    report = build_report(runs, Criterion("val/loss"), x="val/domain/loss", y="val/general/loss")
    assert report.recommended == "s/2" and report.notes == []
    write_report(report, tmp_path / "out")
    assert "val/domain/loss (lower is better)" in (tmp_path / "out" / "report.md").read_text()


def test_a_sweep_without_base_evaluation_gets_a_table_plot_and_pick(tmp_path):
    runs = collect_runs([loss_sweep(tmp_path / "s", general="public", domain="team")])
    report = build_report(runs)  # the defaults: gain/domain_delta vs forgetting/general_delta, budget -0.05
    assert (report.x, report.y) == ("val/team/loss", "val/public/loss")  # public is general in the config
    assert report.recommended == "s/2"  # the lowest val/loss
    assert sorted(report.front) == ["s/2", "s/3"]
    assert report.criterion == "minimize val/loss"
    assert any("no base evaluation" in n for n in report.notes)
    assert any("forgetting/general_delta_lo dropped: no completed run has them" in n for n in report.notes)
    write_report(report, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "**recommended: s/2**" in md and "- note: no completed run has gain/domain_delta" in md
    assert "val/public/loss (lower is better)" in md and "domain gain" not in md
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("<circle") == 4 and "nothing to plot" not in html
    assert (tmp_path / "out" / "tradeoff.png").stat().st_size > 0


def test_a_dict_on_the_command_line_replaces_the_bounds():
    spec = {"metric": GAIN, "at_least": {RETENTION: -0.05}, "at_most": {}}
    assert criterion_spec(spec, ["criterion.at_least={}"])["at_least"] == {}
    replaced = criterion_spec(spec, ["out=x", "criterion.at_least={eval/x/acc: 0.9}"])
    assert replaced["at_least"] == {"eval/x/acc": 0.9}
    assert criterion_spec(spec, ["criterion.at_least.forgetting/general_delta=-0.02"]) == spec  # Hydra's


def test_report_cli_drops_the_budget_with_an_empty_dict(sweep, tmp_path):
    from tests.test_sweep import command

    done = command("itune-report", str(sweep), f"out={tmp_path / 'r'}", "criterion.at_least={}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["criterion"] == "maximize gain/domain_delta" and report["recommended"] == "grid/1"


def test_interrupted_jobs_and_a_grid_overridden_on_the_command_line(tmp_path):
    root = tmp_path / "grid"
    root.mkdir()
    multirun = {
        "hydra": {
            "sweeper": {"_target_": "hydra.BasicSweeper", "params": {"optimizer.lr": "1,2", "peft.r": "4,8"}},
            "overrides": {"task": ["optimizer.lr=3,4,5"]},  # the command line replaces the preset's axis
        }
    }
    (root / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    assert len(expected_grid(root)) == 6
    make_job(root, 0, ["optimizer.lr=3", "peft.r=4"], status="interrupted", error="exit status 143")
    runs = collect_runs([root])
    assert runs[0].status == "interrupted" and len(runs) == 6


def with_bounds(gain: tuple[float, float, float], retention: tuple[float, float, float]) -> dict:
    """metrics.json of a run with the paired statistics: (mean, lo, hi) of gain and general change."""
    out = {}
    for key, (mean, lo, hi) in ((GAIN, gain), (RETENTION, retention)):
        out |= {key: mean, f"{key}_lo": lo, f"{key}_hi": hi}
    return out | {"forgetting/regressions": 0, "forgetting/significant_regressions": 0}


# (gain, general change): run 0 gains most on average but its CI crosses 0; run 1 is the only one with a
# significant gain whose forgetting bound holds; run 2's mean forgetting is in the budget, its bound is not;
# run 3's CI touches 0 (a discrete bootstrap does that): not significant either.
BOUNDED = [
    ((0.30, -0.05, 0.60), (-0.01, -0.03, 0.01)),
    ((0.15, 0.05, 0.25), (-0.02, -0.04, 0.00)),
    ((0.25, 0.10, 0.40), (-0.03, -0.08, 0.02)),
    ((0.40, 0.00, 0.80), (0.00, -0.01, 0.01)),
]


def bounded_sweep(root: Path) -> Path:
    for i, (gain, retention) in enumerate(BOUNDED):
        metrics = with_bounds(gain, retention) | {"forgetting/kl_general": 0.01 * (i + 1)}
        make_job(root, i, [f"optimizer.lr={i + 1}e-4"], metrics)
    return root


def test_the_pick_needs_a_significant_gain_and_a_forgetting_bound_that_holds(tmp_path):
    runs = collect_runs([bounded_sweep(tmp_path / "b")])
    by_means, _ = recommend(runs, Criterion(GAIN, at_least={RETENTION: -0.05}))
    assert by_means == "b/3"  # the highest mean gain, its forgetting mean within the budget
    report = build_report(runs)
    assert report.recommended == "b/1" and report.notes == []
    assert report.criterion == default_criterion().describe()
    assert "1 of 4 completed runs qualify" in report.reason
    assert recommend(runs, Criterion(GAIN, at_least={f"{GAIN}_lo": 1e-9}))[0] == "b/2"  # no budget
    conf = yaml.safe_load((CONF / "report.yaml").read_text())["criterion"]
    assert Criterion.parse(conf) == default_criterion()  # itune-report's default is the same criterion


def test_the_table_shows_the_cis_and_the_statistics_columns(tmp_path):
    report = build_report(collect_runs([bounded_sweep(tmp_path / "b")]))
    write_report(report, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text().splitlines()
    header = next(line for line in md if line.startswith("| run"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[cols.index(GAIN) + 1] == f"{GAIN} CI" and cols[cols.index(RETENTION) + 1] == f"{RETENTION} CI"
    assert {"forgetting/significant_regressions", "forgetting/kl_general"} <= set(cols)
    row = next(line for line in md if line.startswith("| b/1 |"))
    cells = dict(zip(cols, [c.strip() for c in row.strip("|").split("|")], strict=True))
    assert cells[f"{GAIN} CI"] == "[0.05, 0.25]" and cells[f"{RETENTION} CI"] == "[-0.04, 0]"
    assert cells["forgetting/kl_general"] == "0.02" and cells["recommended"] == "yes"
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count('stroke="#1f77b4"') == 2 * len(BOUNDED)  # an x and a y interval per run
    assert f"{GAIN}: 0.15 [0.05, 0.25]" in html  # the hover text


def test_the_tradeoff_plot_draws_the_intervals_as_error_bars(tmp_path):
    from matplotlib.container import ErrorbarContainer

    report = build_report(collect_runs([bounded_sweep(tmp_path / "b")]))
    fig = tradeoff_figure(report)
    bars = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert [(c.has_xerr, c.has_yerr) for c in bars] == [(True, False), (False, True)]
    # one segment per run, from its lower to its upper bound, at the run's other coordinate
    x_segments = [seg.tolist() for seg in bars[0].lines[2][0].get_segments()]
    y_segments = [seg.tolist() for seg in bars[1].lines[2][0].get_segments()]
    np.testing.assert_allclose(x_segments, [[[g[1], r[0]], [g[2], r[0]]] for g, r in BOUNDED])
    np.testing.assert_allclose(y_segments, [[[g[0], r[1]], [g[0], r[2]]] for g, r in BOUNDED])
    import matplotlib.pyplot as plt

    plt.close(fig)
    runs, (below, above) = error_bars(report.runs, GAIN)
    assert [r.name for r in runs] == ["b/0", "b/1", "b/2", "b/3"]
    assert below == pytest.approx([0.35, 0.10, 0.15, 0.40]) and above == pytest.approx([0.3, 0.1, 0.15, 0.4])


def test_runs_without_bounds_still_get_a_pick_with_a_note(sweep, tmp_path):
    report = build_report(collect_runs([sweep]))  # metrics.json from before the paired statistics
    assert report.recommended == "grid/0"  # as before: grid/1 gains more but forgets beyond the budget
    assert report.criterion == f"maximize {GAIN} subject to {GAIN} >= 1e-09 and {RETENTION} >= -0.05"
    assert any("no completed run has confidence bounds" in n for n in report.notes)
    fig = tradeoff_figure(report)
    assert not fig.axes[0].containers  # no error bars
    import matplotlib.pyplot as plt

    plt.close(fig)
    write_report(report, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert " CI" not in md and "- note: no completed run has confidence bounds" in md
    assert "kl_general" not in md and "**recommended: grid/0**" in md


def test_an_older_run_among_bounded_ones_cannot_qualify(tmp_path):
    root = bounded_sweep(tmp_path / "b")
    make_job(root, 4, ["optimizer.lr=5e-4"], {GAIN: 0.9, RETENTION: 0.0})  # no _lo/_hi
    report = build_report(collect_runs([root]))
    assert report.recommended == "b/1"
    assert report.notes == [
        f"1 of 5 completed runs lack a bounded metric ({GAIN}_lo, {RETENTION}_lo): they cannot qualify"
    ]


def test_report_cli_takes_a_bound_on_the_ci(tmp_path):
    from tests.test_sweep import command

    root = bounded_sweep(tmp_path / "b")
    budget = "criterion.at_least={forgetting/general_delta_lo: -0.05}"
    done = command("itune-report", str(root), f"out={tmp_path / 'r'}", budget, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["criterion"] == f"maximize {GAIN} subject to {RETENTION}_lo >= -0.05"
    assert report["recommended"] == "b/3"  # the significance bound is replaced: the top mean gain in budget


def optuna_job(root: Path, num: int, overrides: list[str], **kwargs) -> Path:
    """A job of an Optuna sweep: its overrides end with the sweeper's `optuna_trial`."""
    trial = f"optuna_trial={{storage:'sqlite:////s.db',study:'s',number:{num}}}"
    return make_job(root, num, [*overrides, trial], **kwargs)


def test_pruned_trials_are_listed_as_pruned(tmp_path):
    root = tmp_path / "study"
    optuna_job(root, 0, ["optimizer.lr=0.001"], metrics={GAIN: 0.3, RETENTION: 0.0})
    reason = "trial 1 pruned at step 5 (eval/disclaimer/ends_with_disclaimer = 0.125)"
    optuna_job(root, 1, ["optimizer.lr=0.01"], status="pruned", reason=reason, step=5, duration_s=12.0)
    runs = collect_runs([root])
    assert [(r.status, r.error) for r in runs] == [("completed", None), ("pruned", reason)]
    assert "optuna_trial" not in runs[1].overrides  # where it reported, not what it did
    report = build_report(runs)
    assert report.counts()["pruned"] == 1 and report.swept == ["optimizer.lr"]
    md = (write_report(report, tmp_path / "out", plots=False)[1]).read_text()
    assert "1 completed, 1 pruned" in md and "| study/1 | pruned | 0.01 |" in md


def hydra_job(root: Path, overrides: list[str]) -> tuple[Path, dict]:
    """A job dir as itune-train writes it (.hydra/overrides.yaml, hydra.yaml) and its composed config."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    job = make_job(root, 0, overrides, {GAIN: 0.4, f"{GAIN}_lo": 0.1, RETENTION: 0.0, f"{RETENTION}_lo": 0.0})
    OmegaConf.save(OmegaConf.create({"hydra": cfg.hydra}), job / ".hydra" / "hydra.yaml")
    plain = OmegaConf.to_container(cfg, resolve=False)
    return job, {k: v for k, v in plain.items() if k not in ("hydra", "optuna_trial")}


def test_the_recommended_run_is_one_command_away(tmp_path):
    """The report writes experiment/recommended.yaml; composed with the printed command it is the
    recommended run's config (presets, group choices, values, a key added with +)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from itune.sweep.report import RECOMMENDED

    overrides = [
        "experiment=demo_sweep",
        "hparams_search=forgetting_mitigation",
        "model=tiny",
        "template=chatml",
        "optimizer.lr=0.00123",
        "data.sources.general.weight=0.31",
        "regularizer.weight=0.2",
        "eval.suites.disclaimer.limit=3",
        "+callbacks.timer={_target_: lightning.pytorch.callbacks.Timer}",
        "optuna_trial={storage:'sqlite:////s.db',study:'s',number:0}",
    ]
    _, expected = hydra_job(tmp_path / "study", overrides)
    report = build_report(collect_runs([tmp_path / "study"]))
    assert report.recommended == "study/0"
    out = tmp_path / "my report"  # a space: the search path is quoted
    write_report(report, out, plots=False)
    text = (out / "experiment" / f"{RECOMMENDED}.yaml").read_text()
    command = text.splitlines()[1].removeprefix("# ")
    assert text.startswith("# @package _global_\n# itune-train ") and "optuna_trial" not in text
    assert f"Rerun the recommended run: `{command}`" in (out / "report.md").read_text()
    args = shlex.split(command)  # as a shell passes it
    assert args == [
        "itune-train",
        f"hydra.searchpath=['file://{out.resolve()}']",
        f"experiment={RECOMMENDED}",
    ]
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        again = compose("train", overrides=args[1:])
    plain = OmegaConf.to_container(again, resolve=False)
    assert plain.pop("optuna_trial") is None and plain == expected


def test_no_recommended_experiment_without_the_runs_hydra_files(sweep, tmp_path):
    paths = write_report(build_report(collect_runs([sweep])), tmp_path / "out", plots=False)
    assert not any(p.name == "recommended.yaml" for p in paths)
    assert "Rerun" not in (tmp_path / "out" / "report.md").read_text()


def compare_mitigations():
    """scripts/compare_mitigations.py as a module (scripts are not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "compare_mitigations.py"
    spec = importlib.util.spec_from_file_location("compare_mitigations", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mitigation_job(
    root: Path, num: int, regularizer: str, weight: float, gain: float, kl: float, seed: int | None = None
) -> Path:
    """A demo_forgetting job: metrics.json, forgetting.json rows with CIs, status.json, csv history (the
    general KL at validation steps 9 and 19, logged one step before the periodic evals at 10 and 20)."""
    overrides = [f"regularizer={regularizer}", f"data.sources.general.weight={weight}"]
    overrides += [f"seed={seed}"] if seed is not None else []
    metrics = {
        GAIN: gain,
        f"{GAIN}_lo": gain - 0.1,
        f"{GAIN}_hi": gain + 0.1,
        "eval/disclaimer/ends_with_disclaimer": 0.96,
        "val/general/kl_base": kl,
    }
    job = make_job(root, num, overrides, metrics, status="completed", duration_s=300.0 + num)
    rows = [
        {
            "metric": "eval/ifeval/prompt_level_strict_acc",
            "improvement": -0.1,
            "ci_lo": -0.2,
            "ci_hi": 0.0,
            "significant": num == 0,
        },
        {
            "metric": "eval/perplexity/alpaca_ppl",
            "improvement": -0.05 * (1 + num),
            "ci_lo": -0.08,
            "ci_hi": -0.02,
            "significant": True,
        },
        {"metric": "val/general/kl_base", "improvement": None, "informational": True},
    ]
    (job / "forgetting.json").write_text(json.dumps({"rows": rows, "summary": {}}))
    (job / "csv").mkdir()
    history = (
        "step,eval/disclaimer/ends_with_disclaimer,train/loss,val/general/kl_base\n"
        f"0,,2.0,0.0\n9,,,{kl / 2}\n10,0.5,,\n19,,,{kl}\n20,0.96,,\n40,0.97,,\n"
    )
    (job / "csv" / "metrics.csv").write_text(history)
    return job


def test_compare_mitigations_writes_one_table(tmp_path, capsys):
    root = tmp_path / "forgetting"
    for num, (regularizer, weight) in enumerate([("none", 0.0), ("none", 0.3), ("kl_base", 0.0)]):
        mitigation_job(root, num, regularizer, weight, gain=0.9 - 0.1 * num, kl=0.05 / (num + 1))
    make_job(root, 3, ["regularizer=l2_init", "data.sources.general.weight=0.0"], status="failed", error="x")
    table = compare_mitigations().main([str(root)])
    assert (root / "mitigations.md").read_text() == table and table in capsys.readouterr().out
    lines = table.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == [
        "mitigation",
        "status",
        "compliance",
        "first step >= 0.95",
        "domain gain [CI]",
        "IFEval strict",
        "Alpaca ppl",
        "KL general",
        "wall time",
    ]  # columns that no job has (HellaSwag, ARC, ...) are left out
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:6]]
    assert [r[0] for r in rows] == ["plain SFT", "replay (0.3)", "kl_base", "l2_init"]
    assert rows[0][2:] == [
        "0.960",
        "20",
        "+0.900 [+0.800, +1.000]",
        "-0.100 [-0.200, +0.000] *",
        "-0.050 [-0.080, -0.020] *",
        "0.050",
        "5.0 min",
    ]
    assert rows[1][5] == "-0.100 [-0.200, +0.000]" and rows[2][7] == "0.017"
    assert rows[3][1] == "failed" and set(rows[3][2:-1]) == {"-"}


def test_compare_mitigations_adds_one_row_per_interpolation_scale(tmp_path):
    root = tmp_path / "forgetting"
    mitigation_job(root, 0, "none", 0.0, gain=0.9, kl=0.05)
    point = {
        "metrics": {"eval/disclaimer/ends_with_disclaimer": 0.5},
        "summary": {GAIN: 0.4, f"{GAIN}_lo": 0.3, f"{GAIN}_hi": 0.5},
        "rows": [
            {"metric": "eval/perplexity/alpaca_ppl", "improvement": -0.01, "ci_lo": -0.02, "ci_hi": 0.0}
        ],
    }
    curve = tmp_path / "interpolation.json"
    curve.write_text(json.dumps({"points": [point | {"scale": 0.5}, point | {"scale": 1.0}]}))
    table = compare_mitigations().main([str(root), "--interpolation", str(curve)])
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:5]]
    assert [r[0] for r in rows] == ["plain SFT", "WiSE-FT λ=0.5", "WiSE-FT λ=1"]
    assert rows[1][2:5] == ["0.500", "-", "+0.400 [+0.300, +0.500]"]
    assert rows[1][6] == "-0.010 [-0.020, +0.000]" and rows[1][-2:] == ["-", "-"]


def test_compare_mitigations_pairs_seeds_with_plain_sft(tmp_path):
    root = tmp_path / "forgetting"
    jobs = [("none", 1, 0.2), ("none", 2, 0.3), ("l2_init", 1, 0.1), ("l2_init", 2, 0.2)]
    for num, (regularizer, seed, kl) in enumerate(jobs):  # Alpaca ppl change: -0.05 * (1 + num)
        mitigation_job(root, num, regularizer, 0.0, gain=0.8, kl=kl, seed=seed)
    table = compare_mitigations().main([str(root)])
    lines = table.splitlines()
    assert [r.split("|")[1].strip() for r in lines[2:6]] == [
        "plain SFT, seed=1",
        "plain SFT, seed=2",
        "l2_init, seed=1",
        "l2_init, seed=2",
    ]
    start = lines.index(next(line for line in lines if line.startswith("| mitigation | seeds")))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    plain, l2 = ([c.strip() for c in line.strip("|").split("|")] for line in lines[start + 2 : start + 4])
    cells = dict(zip(header, l2, strict=True))
    assert plain[:4] == ["plain SFT", "1, 2", "2/2", "20, 20"] and plain[-2:] == ["-", "-"]
    # drops, positive = worse. Alpaca: 0.15, 0.20 -> mean 0.175, t-interval 12.706 * 0.0354 / sqrt(2) = 0.318
    assert cells["Alpaca ppl"] == "+0.175 [-0.143, +0.493]"
    assert cells["KL general"] == "+0.150 [-0.485, +0.785]"
    assert cells["leak rule"] == cells["leak rule - plain SFT"] == "-"  # no job measured it
    # paired by seed: both differences 0.10 / -0.10, so the interval is a point and excludes 0
    assert cells["Alpaca ppl - plain SFT"] == "+0.100 [+0.100, +0.100] *"
    assert cells["KL general - plain SFT"] == "-0.100 [-0.100, -0.100] *"
    assert cells["drop removed"] == "-133%, -, +40%"  # 1 - 0.35/0.15, no leak rule, 1 - 0.3/0.5
    steps = lines[lines.index("| mitigation | step 10 | step 20 |") + 2 :]
    assert steps[:2] == ["| plain SFT | 0.125 | 0.250 |", "| l2_init | 0.075 | 0.150 |"]


def test_the_report_recommends_by_the_sweeps_constrained_objective(tmp_path):
    """A sweep whose jobs optimised {metric, at_least} (multirun.yaml) is reported by that criterion, not
    the default one; a criterion on the command line still wins."""
    from omegaconf import OmegaConf

    from itune.sweep.report import run_report, sweep_objective

    root = tmp_path / "study"
    compliance = "eval/disclaimer/ends_with_disclaimer"
    objective = {"metric": f"{RETENTION}_lo", "at_least": {compliance: 0.95}, "penalty": 10.0}
    (root).mkdir()
    (root / "multirun.yaml").write_text(yaml.safe_dump({"optimized_metric": objective, "hydra": {}}))
    jobs = [  # (gain, general change's lower bound, compliance)
        (0.9, -0.30, 1.0),  # the default criterion's pick would be the largest gain within -0.05: none is
        (0.8, -0.10, 0.96),  # the sweep's pick: the smallest drop at >= 95% compliance
        (0.5, -0.01, 0.50),  # the smallest drop, but short of the target
    ]
    for num, (gain, lo, comp) in enumerate(jobs):
        metrics = {GAIN: gain, f"{GAIN}_lo": gain - 0.1, RETENTION: lo + 0.05, f"{RETENTION}_lo": lo}
        make_job(root, num, [f"optimizer.lr={num + 1}e-3"], metrics | {compliance: comp}, status="completed")
    assert sweep_objective([root]) == {"metric": f"{RETENTION}_lo", "at_least": {compliance: 0.95}}
    cfg = OmegaConf.create(
        {"sweeps": [str(root)], "out": str(tmp_path / "r"), "x": GAIN, "y": RETENTION, "metrics": None}
        | {"criterion": {"metric": GAIN, "direction": None, "at_least": {f"{RETENTION}_lo": -0.05}}}
    )
    run_report(cfg)
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["criterion"] == f"maximize {RETENTION}_lo subject to {compliance} >= 0.95"
    assert report["recommended"] == "study/1"
    (root / "multirun.yaml").write_text(yaml.safe_dump({"optimized_metric": "val/loss"}))
    assert sweep_objective([root]) is None  # a plain metric: the report's own criterion
