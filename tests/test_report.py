"""itune-report on synthetic sweep directories: statuses, Pareto front, recommendation, files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from itune.report import build_report, collect_runs, pareto_front, recommend, write_report
from itune.sweep.criterion import Criterion, objective_value

GAIN, RETENTION = "gain/domain_delta", "forgetting/general_delta"


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
