"""Multirun sweeps through the real `itune-train -m` path, then itune-report on them; launcher presets."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module

GAIN, RETENTION = "gain/domain_delta", "forgetting/general_delta"
TINY = [
    "model=tiny",
    "template=chatml",
    "trainer=debug",
    "trainer.limit_val_batches=1.0",
    "logger=csv",
    "save_model=false",
    "eval=demo",
    "eval.suites.disclaimer.limit=4",
    "eval.suites.general_rules.limit=4",
    "eval.suites.disclaimer.max_new_tokens=8",
    "eval.suites.general_rules.max_new_tokens=8",
    "eval.show_samples=0",
    "curate=none",
    "data.max_val_samples=8",
]


def command(name: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name(name))
    return subprocess.run(
        [exe, *args], cwd=cwd, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})}
    )


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """A 2x2 grid (lr x general weight) of tiny runs with the forgetting report."""
    root = tmp_path_factory.mktemp("sweep")
    done = command(
        "itune-train",
        "-m",
        *TINY,
        f"eval.cache_dir={root / 'cache'}",
        f"hydra.sweep.dir={root / 'grid'}",
        "optimizer.lr=1e-3,3e-2",
        "data.sources.general.weight=0,0.5",
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return root / "grid"


@pytest.mark.slow
def test_grid_jobs_write_their_run_dirs(grid):
    jobs = sorted((p for p in grid.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert len(jobs) == 4
    seen = set()
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert {GAIN, RETENTION, "forgetting/regressions"} <= set(metrics)
        assert (job / "forgetting.json").is_file() and (job / "forgetting.md").is_file()
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        seen.add(tuple(o for o in overrides if o.startswith(("optimizer.lr", "data.sources"))))
        assert json.loads((job / "status.json").read_text())["status"] == "completed"
    assert len(seen) == 4
    assert "4 completed" in (grid / "summary.md").read_text()


@pytest.mark.slow
def test_report_on_the_grid(grid, tmp_path):
    out = tmp_path / "report"
    done = command("itune-report", str(grid), f"out={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    assert {(r["optimizer.lr"], r["data.sources.general.weight"]) for r in rows} == {
        ("0.001", "0"),
        ("0.001", "0.5"),
        ("0.03", "0"),
        ("0.03", "0.5"),
    }
    # the front and the recommendation, computed here from the runs' metrics.json
    points = {}
    for job in grid.iterdir():
        if job.name.isdigit():
            m = json.loads((job / "metrics.json").read_text())
            bounds = (m[f"{GAIN}_lo"], m[f"{RETENTION}_lo"])
            points[f"grid/{job.name}"] = (m[GAIN], m[RETENTION], m["forgetting/regressions"], *bounds)
    front = {
        n
        for n, (a, b, *_) in points.items()
        if not any(a2 >= a and b2 >= b and (a2 > a or b2 > b) for a2, b2, *_ in points.values())
    }
    # the default pick: a significant gain (its CI above 0) and a forgetting bound that holds
    feasible = {n: p for n, p in points.items() if p[3] >= 1e-9 and p[4] >= -0.05}
    expected = (
        max(feasible, key=lambda n: (feasible[n][0], feasible[n][1], -feasible[n][2])) if feasible else None
    )
    report = json.loads((out / "report.json").read_text())
    assert set(report["front"]) == front
    assert report["recommended"] == expected
    assert {r["run"] for r in rows if r["pareto"] == "True"} == front
    for name in ("tradeoff.png", "report.html", "report.md", "by_optimizer_lr.png"):
        assert (out / name).stat().st_size > 0, name
    assert "recommended:" in done.stdout


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    done = command(
        "itune-train",
        "-m",
        "model=tiny",
        "trainer=debug",
        "trainer.max_steps=1",
        "save_model=false",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "data.sources.general.weight=-1,0.3",  # negative weights fail inside the job (data setup)
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "1 of 2 jobs failed" in done.stdout + done.stderr
    bad, good = tmp_path / "sweep" / "0", tmp_path / "sweep" / "1"
    assert "weight" in (bad / "error.txt").read_text()
    assert json.loads((bad / "status.json").read_text())["status"] == "failed"
    assert (good / "metrics.json").is_file()  # the job after the failure ran
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert summary["counts"]["failed"] == 1 and summary["counts"]["completed"] == 1
    report = command("itune-report", str(tmp_path / "sweep"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    md = (tmp_path / "sweep" / "report" / "report.md").read_text()
    assert "| sweep/0 | failed |" in md


LAUNCHERS = {
    "basic": ("hydra._internal.core_plugins.basic_launcher.BasicLauncher", None),
    "joblib": (
        "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
        "hydra_plugins.hydra_joblib_launcher.config.JobLibLauncherConf",
    ),
    "submitit_local": (
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
        "hydra_plugins.hydra_submitit_launcher.config.LocalQueueConf",
    ),
    "submitit_slurm": (
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
        "hydra_plugins.hydra_submitit_launcher.config.SlurmQueueConf",
    ),
    "slurm_ddp": (  # ours (conf/hydra/launcher), extending submitit_slurm
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
        "hydra_plugins.hydra_submitit_launcher.config.SlurmQueueConf",
    ),
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_launcher_presets_compose_with_the_plugins_keys(launcher, recwarn):
    from hydra.utils import get_class

    target, schema = LAUNCHERS[launcher]
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    node = cfg.hydra.launcher
    assert node._target_ == target
    get_class(target)  # the plugin is installed
    if schema:
        fields = {f.name for f in dataclasses.fields(get_class(schema))}
        assert set(node) <= fields, set(node) - fields
    assert {"partition", "nodes", "gpus_per_node", "timeout_min"} <= set(node) or "slurm" not in launcher
    if launcher == "slurm_ddp":
        assert node.tasks_per_node == node.gpus_per_node == 1  # one process per GPU, every trial its own job
    assert not [w for w in recwarn if "ConfigStore schema with the same name" in str(w.message)]
