"""Optuna pruning of itune-train jobs: the periodic eval's hook reports to the job's trial; a pruned trial of
a real tiny-model sweep stops before its last step and is recorded as pruned (status.json, study, report)."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from itune.sweep.job import run_train_job
from itune.sweep.pruning import OptunaPruning, Pruned, TrialPrunedAt, trial_override
from itune.sweep.report import build_report, collect_runs, to_markdown
from tests.test_sweep_optuna import load, optuna_multirun

METRIC = "eval/disclaimer/ends_with_disclaimer"
PRUNE_ALL = "{_target_: optuna.pruners.ThresholdPruner, lower: 2.0}"  # any value in [0, 1] is below 2


def fake_trainer(step: int) -> Any:
    """What the hook reads from a Lightning trainer: the step, the rank, the strategy's broadcast."""
    return SimpleNamespace(
        global_step=step, is_global_zero=True, strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj)
    )


def study_with_history(tmp_path: Path, directions: list[str] | None = None) -> tuple[str, optuna.Study]:
    """A study with two complete trials that reported 0.5 and 0.9 at step 5, and a third one running."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, directions=directions or ["maximize"])
    if len(study.directions) == 1:
        for value in (0.5, 0.9):
            trial = study.ask()
            trial.report(value, 5)
            study.tell(trial, value)
    study.ask()
    return storage, study


def hook(storage: str, number: int, **kwargs: Any) -> OptunaPruning:
    return OptunaPruning({"storage": storage, "study": "s", "number": number}, **kwargs)


def test_the_trial_override_parses_to_the_hooks_spec():
    override = trial_override("sqlite:////tmp/it's here/s.db", "mitigation-1a2b", 7)
    value = OverridesParser.create().parse_override(override).value()
    assert value == {"storage": "sqlite:////tmp/it's here/s.db", "study": "mitigation-1a2b", "number": 7}


def test_a_trial_below_the_percentile_is_pruned_at_its_step(tmp_path):
    storage, study = study_with_history(tmp_path)
    pruner = optuna.pruners.PercentilePruner(75.0, n_startup_trials=2)
    weak = hook(storage, 2, objective=METRIC, pruner=pruner)
    with pytest.raises(TrialPrunedAt) as pruned:
        weak(fake_trainer(5), {METRIC: 0.25})
    assert pruned.value.step == 5 and pruned.value.value == 0.25 and "step 5" in str(pruned.value)
    assert study.trials[2].intermediate_values == {5: 0.25}
    assert Pruned.from_error(pruned.value) == Pruned(str(pruned.value), 5, 0.25)
    assert pickle.loads(pickle.dumps(pruned.value)).step == 5  # launchers in other processes

    study.ask()
    strong = hook(storage, 3, objective=METRIC, pruner=pruner)
    strong(fake_trainer(5), {METRIC: 0.75})  # above the 25th percentile of (0.5, 0.9): goes on
    assert study.trials[3].intermediate_values == {5: 0.75}


def test_the_objective_may_bound_other_periodic_metrics(tmp_path):
    storage, study = study_with_history(tmp_path)
    spec = {"metric": METRIC, "at_least": {"eval/general_rules/no_disclaimer": 0.75}, "penalty": 1.0}
    prune_all = optuna.pruners.ThresholdPruner(lower=-10.0)
    hook(storage, 2, objective=spec, pruner=prune_all)(
        fake_trainer(5), {METRIC: 1.0, "eval/general_rules/no_disclaimer": 0.5}
    )
    assert study.trials[2].intermediate_values == {5: 0.75}  # 1.0 - 1.0 * (0.75 - 0.5)
    with pytest.raises(ValueError, match="periodic eval does not measure"):
        hook(storage, 2, objective=spec, pruner=prune_all)(fake_trainer(6), {METRIC: 1.0})


def test_nothing_is_reported_outside_a_running_single_objective_trial(tmp_path, caplog):
    OptunaPruning(None)(fake_trainer(5), {})  # a plain run: Optuna is not touched

    storage, study = study_with_history(tmp_path)
    always = optuna.pruners.ThresholdPruner(lower=2.0)
    finished = hook(storage, 0, objective=METRIC, pruner=always)  # e.g. a resumed trial's job
    with caplog.at_level(logging.WARNING, logger="itune.sweep.pruning"):
        finished(fake_trainer(5), {METRIC: 0.0})
        finished(fake_trainer(10), {METRIC: 0.0})
    assert study.trials[0].intermediate_values == {5: 0.5}
    said = [r.getMessage() for r in caplog.records if r.name == "itune.sweep.pruning"]
    assert len(said) == 1 and "trial 0 of study s is COMPLETE already" in said[0]  # said once

    caplog.clear()
    unreachable = {"storage": f"sqlite:///{tmp_path}/absent/study.db", "study": "s", "number": 2}
    with caplog.at_level(logging.WARNING, logger="itune.sweep.pruning"):
        OptunaPruning(unreachable, pruner=always)(fake_trainer(5), {METRIC: 0.0})
    assert "cannot be reached" in caplog.text

    with pytest.raises(ValueError, match="study s is to maximize"):
        hook(storage, 2, objective="val/general/loss", pruner=always)(
            fake_trainer(5), {"val/general/loss": 1.0}
        )


def test_multi_objective_studies_are_not_pruned(tmp_path, caplog):
    storage, study = study_with_history(tmp_path, ["maximize", "maximize"])
    with caplog.at_level(logging.WARNING, logger="itune.sweep.pruning"):
        hook(storage, 0, pruner=optuna.pruners.ThresholdPruner(lower=2.0))(fake_trainer(5), {METRIC: 0.0})
    assert "multi-objective" in caplog.text and study.trials[0].intermediate_values == {}


@pytest.mark.slow
def test_a_pruned_tiny_trial_stops_early_and_is_recorded_as_pruned(tmp_path):
    """Two trials of hparams_search=forgetting_mitigation on the tiny model; a pruner that gives up on every
    trial at its first periodic eval (step 2 of 6) stops both: PRUNED in the study, `pruned` in status.json
    and in itune-report, not failed, and the sweep went on to the second trial."""
    results = optuna_multirun(
        tmp_path,
        "hydra.sweeper.n_trials=2",
        "optimized_metric=null",  # no base evaluation needed: no trial gets to the end
        "curate=none",
        "data.max_val_samples=4",
        "trainer.max_steps=6",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "data.batch_size=4",
        "logger=csv",
        "save_model=false",
        "callbacks.periodic_eval.suites.disclaimer.limit=2",
        "callbacks.periodic_eval.suites.disclaimer.max_new_tokens=4",
        "~callbacks.periodic_eval.on_eval.optuna.pruner",  # another pruner: delete, then add
        f"+callbacks.periodic_eval.on_eval.optuna.pruner={PRUNE_ALL}",
        task=run_train_job,
        preset="forgetting_mitigation",
    )
    study = load(tmp_path, results["study_name"])
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"] and results["pruned"] == 2
    assert all(list(t.intermediate_values) == [2] for t in study.trials)
    sweep = tmp_path / results["study_name"]
    for job in (sweep / "0", sweep / "1"):
        status = json.loads((job / "status.json").read_text())
        assert status["status"] == "pruned" and status["step"] == 2 and "pruned at step 2" in status["reason"]
        assert not (job / "metrics.json").exists() and not (job / "error.txt").exists()
        assert yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())[-1].startswith("optuna_trial=")
    report = build_report(collect_runs([sweep]))
    assert [r.status for r in report.runs] == ["pruned", "pruned"]
    assert report.counts()["pruned"] == 2 and report.counts()["failed"] == 0
    assert "optuna_trial" not in report.swept and "2 pruned" in to_markdown(report)
