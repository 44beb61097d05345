"""hparams_search=forgetting_optuna: search space parsing; the sweeper's own path (resume, study identity,
command-line space, failed trials) on a cheap objective instead of training; a real 2-trial study on tiny
runs, resumed to 3 (slow)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from itune.sweep.criterion import objective_value
from itune.sweep.optuna import as_values, fill_placeholders, search_space
from itune.sweep.pruning import Pruned
from itune.sweep.study import StudyConfigError
from tests.conftest import hydra_multirun, optuna_sweep
from tests.test_sweep import TINY, command

SEEN: list[DictConfig] = []  # the config of every job of the last multirun


def _objective(cfg: DictConfig) -> float:
    """A cheap stand-in for training: best at lr=1e-3."""
    SEEN.append(cfg)
    return -((float(cfg.optimizer.lr) - 1e-3) ** 2)


def optuna_multirun(
    tmp_path: Path,
    *overrides: str,
    task: Callable[[DictConfig], Any] = _objective,
    preset: str = "forgetting_optuna",
) -> dict[str, Any]:
    """`itune-train -m hparams_search=<preset> …` in this process, each job `task(cfg)` (a stand-in for
    training unless `task` trains).

    The study is in tmp_path/study.db, the jobs in tmp_path/<study name>/<trial>; returns the results.
    """
    SEEN.clear()
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    return optuna_sweep(task, storage, tmp_path, "hydra.sweeper.n_trials=3", *overrides, preset=preset)


def load(tmp_path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'study.db'}")


def test_search_space_from_override_syntax():
    overrides = OverridesParser.create().parse_overrides(
        [
            "optimizer.lr=tag(log, interval(1e-5, 1e-3))",
            "data.sources.general.weight=interval(0.0, 0.6)",
            "peft.r=choice(4, 8, 16)",
            "trainer.max_steps=range(2, 6, 2)",
            "model=tiny",
        ]
    )
    space, fixed = search_space(overrides)
    assert space["optimizer.lr"] == FloatDistribution(1e-5, 1e-3, log=True)
    assert space["data.sources.general.weight"] == FloatDistribution(0.0, 0.6)
    assert isinstance(space["peft.r"], CategoricalDistribution) and len(space["peft.r"].choices) == 3
    assert space["trainer.max_steps"] == IntDistribution(2, 6, step=2)
    assert fixed == ["model=tiny"]
    assert as_values(0.5, 1) == [0.5] and as_values(None, 1) is None and as_values(float("nan"), 1) is None


def test_command_line_overrides_replace_pin_and_extend_the_preset_space():
    overrides = OverridesParser.create().parse_overrides(
        [
            "optimizer.lr=tag(log, interval(1e-5, 1e-3))",  # the preset's, first
            "peft.r=choice(4, 8, 16)",
            "optimizer.lr=interval(1e-4, 2e-4)",  # the command line's, after
            "peft.r=8",
            "optimizer.weight_decay=choice(0.0, 0.1)",
        ]
    )
    space, fixed = search_space(overrides)
    assert space["optimizer.lr"] == FloatDistribution(1e-4, 2e-4)
    assert "peft.r" not in space and fixed == ["peft.r=8"]
    assert isinstance(space["optimizer.weight_decay"], CategoricalDistribution)


def test_placeholders_of_the_preset_params():
    params = {"data.sources.{general_source}.weight": "interval(0, 1)", "peft.r": "choice(4, 8)"}
    assert fill_placeholders(params, {"general_source": "public"}) == {
        "data.sources.public.weight": "interval(0, 1)",
        "peft.r": "choice(4, 8)",
    }
    assert fill_placeholders(params, {"general_source": None}) == {"peft.r": "choice(4, 8)"}
    with pytest.raises(ValueError, match="general_source"):
        fill_placeholders(params, {})


def test_a_resumed_study_continues_the_sampler(tmp_path):
    first = optuna_multirun(tmp_path)
    assert first["complete"] == 3
    again = optuna_multirun(tmp_path, "hydra.sweeper.n_trials=4")
    assert again["study_name"] == first["study_name"] and len(SEEN) == 1  # resumed: one more trial
    trials = load(tmp_path, first["study_name"]).trials
    assert len(trials) == 4
    assert all(trials[3].params != t.params for t in trials[:3])  # not trial 0 again (seed 42 restarted)


def test_a_study_is_named_after_and_tied_to_its_fixed_config(tmp_path):
    a = optuna_multirun(tmp_path, "trainer.max_steps=5", "hydra.sweeper.n_trials=1")
    b = optuna_multirun(tmp_path, "trainer.max_steps=7", "hydra.sweeper.n_trials=1")
    assert a["study_name"] != b["study_name"] and a["study_name"].startswith("forgetting-")
    assert (tmp_path / a["study_name"] / "0").is_dir() and (tmp_path / b["study_name"] / "0").is_dir()
    assert optuna_multirun(tmp_path, "trainer.max_steps=5", "hydra.sweeper.n_trials=1") == a  # resumed
    assert SEEN == []

    pinned = ["hydra.sweeper.study_name=pinned", "hydra.sweeper.n_trials=1"]
    optuna_multirun(tmp_path, "trainer.max_steps=5", *pinned)
    with pytest.raises(StudyConfigError) as error:
        optuna_multirun(tmp_path, "trainer.max_steps=7", "optimizer.weight_decay=0.1", *pinned)
    message = str(error.value)
    assert "\n" not in message and "trainer.max_steps: 5 → 7" in message
    assert "optimizer.weight_decay: 0.0 → 0.1" in message and "allow_changed_config" in message
    assert len(load(tmp_path, "pinned").trials) == 1  # nothing was added
    allowed = ["hydra.sweeper.allow_changed_config=true", "hydra.sweeper.n_trials=2"]
    optuna_multirun(tmp_path, "trainer.max_steps=7", *pinned, *allowed)
    assert len(load(tmp_path, "pinned").trials) == 2


def test_the_search_space_changes_on_the_command_line(tmp_path):
    results = optuna_multirun(
        tmp_path,
        "optimizer.lr=tag(log, interval(1e-4, 2e-4))",
        "peft.r=8",
        "optimizer.weight_decay=choice(0.0, 0.1)",
    )
    assert len(SEEN) == 3
    assert all(1e-4 <= cfg.optimizer.lr <= 2e-4 and cfg.peft.r == 8 for cfg in SEEN)
    assert {cfg.optimizer.weight_decay for cfg in SEEN} <= {0.0, 0.1}
    assert set(results["best_params"]) == {
        "optimizer.lr",
        "data.sources.general.weight",
        "scheduler.num_warmup_steps",
        "optimizer.weight_decay",
    }


def test_the_preset_source_name_is_a_parameter(tmp_path):
    results = optuna_multirun(
        tmp_path, "hydra.sweeper.vars.general_source=domain", "hydra.sweeper.n_trials=1"
    )
    assert "data.sources.domain.weight" in results["best_params"]
    assert "data.sources.general.weight" not in results["best_params"]
    off = optuna_multirun(tmp_path, "hydra.sweeper.vars.general_source=null", "hydra.sweeper.n_trials=1")
    assert not any(k.startswith("data.") for k in off["best_params"])
    with pytest.raises(
        ValueError, match=r"data.sources.public.weight .*data.sources has \['domain', 'general'\]"
    ):
        optuna_multirun(tmp_path, "hydra.sweeper.vars.general_source=public")
    assert SEEN == []  # refused before any trial


def test_failed_trials_are_told_fail_never_left_running(tmp_path):
    def flaky(cfg: DictConfig) -> float:
        if cfg.peft.r == 16:
            raise RuntimeError("out of memory")
        return _objective(cfg)

    results = optuna_multirun(tmp_path, task=flaky)  # trial 2 has peft.r=16
    states = [t.state for t in load(tmp_path, results["study_name"]).trials]
    assert optuna.trial.TrialState.FAIL in states and optuna.trial.TrialState.RUNNING not in states

    with pytest.raises(ConfigCompositionException):  # every value of the searched key is refused
        optuna_multirun(tmp_path, "seed=choice(abc, xyz)", "hydra.sweeper.study_name=bad")
    assert [t.state for t in load(tmp_path, "bad").trials] == [optuna.trial.TrialState.FAIL]


def test_an_interrupted_trial_is_failed_and_run_again_on_resume(tmp_path):
    def stopped(cfg: DictConfig) -> float:
        if len(SEEN) == 1:
            raise SystemExit(1)  # what a job does on Ctrl-C or SIGTERM
        return _objective(cfg)

    with pytest.raises(SystemExit):
        optuna_multirun(tmp_path, "hydra.sweeper.study_name=cut", task=stopped)
    assert [t.state.name for t in load(tmp_path, "cut").trials] == ["COMPLETE", "FAIL"]
    optuna_multirun(tmp_path, "hydra.sweeper.study_name=cut")
    states = [t.state.name for t in load(tmp_path, "cut").trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]  # 3 trials count; the cut one does not


@pytest.mark.slow
def test_optuna_study_runs_and_resumes(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = [
        "-m",
        *TINY,
        "hparams_search=forgetting_optuna",
        f"eval.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweep.dir={tmp_path / 'study'}",
        "hydra.sweeper.sampler.n_startup_trials=1",
    ]
    done = command("itune-train", *args, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    for trial in ("0", "1"):
        job = tmp_path / "study" / trial
        metrics = json.loads((job / "metrics.json").read_text())
        spec = {
            "metric": "gain/domain_delta",
            "at_least": {"forgetting/general_delta_lo": -0.05},
            "penalty": 10.0,
        }
        status = json.loads((job / "status.json").read_text())
        assert status["objective"] == pytest.approx(objective_value(metrics, spec))
    results = yaml.safe_load((tmp_path / "study" / "optimization_results.yaml").read_text())
    assert results["complete"] == 2 and "optimizer.lr" in results["best_params"]

    again = command("itune-train", *args, "hydra.sweeper.n_trials=3", cwd=tmp_path)  # resume: one more trial
    assert again.returncode == 0, again.stderr[-4000:]
    study = optuna.load_study(study_name=results["study_name"], storage=storage)
    assert len(study.trials) == 3 and (tmp_path / "study" / "2" / "metrics.json").is_file()
    assert not (tmp_path / "study" / "3").exists()


def test_jobs_reach_their_trial_and_pruned_trials_are_told_pruned(tmp_path):
    def pruned_when_large(cfg: DictConfig) -> Any:
        SEEN.append(cfg)
        if cfg.optimizer.lr > 1e-3:
            return Pruned("pruned at step 2", step=2, value=0.1)
        if cfg.optimizer.lr > 1e-4:
            raise optuna.TrialPruned("pruned by a task that raises")
        return -float(cfg.optimizer.lr)

    results = optuna_multirun(tmp_path, "hydra.sweeper.n_trials=4", task=pruned_when_large)
    study = load(tmp_path, results["study_name"])
    for cfg, trial in zip(SEEN, study.trials, strict=True):
        assert dict(cfg.optuna_trial) == {
            "storage": f"sqlite:///{tmp_path / 'study.db'}",
            "study": results["study_name"],
            "number": trial.number,
        }
        expected = "PRUNED" if cfg.optimizer.lr > 1e-4 else "COMPLETE"
        assert trial.state.name == expected
    assert results["pruned"] == sum(t.state.name == "PRUNED" for t in study.trials) > 0
    assert optuna_multirun(tmp_path, "hydra.sweeper.n_trials=4", task=pruned_when_large) == results  # resumed
    assert SEEN == []  # pruned trials count as done


def test_the_mitigation_preset_searches_lr_general_weight_and_alpha(tmp_path):
    results = optuna_multirun(tmp_path, "hydra.sweeper.n_trials=1", preset="forgetting_mitigation")
    assert set(results["best_params"]) == {
        "optimizer.lr",
        "data.sources.general.weight",
        "regularizer.weight",
    }
    (cfg,) = SEEN
    assert cfg.regularizer._target_ == "itune.regularizers.KLToBase"
    hook = cfg.callbacks.periodic_eval.on_eval.optuna
    assert hook._target_ == "itune.sweep.pruning.OptunaPruning" and hook.trial.number == 0
    assert results["study_name"].startswith("mitigation-")


def test_the_forgetting_search_experiment_replaces_the_grid_and_optimises_the_drop_at_the_target(tmp_path):
    """experiment=demo_forgetting_search: demo_forgetting's grid (regularizer, general weight) gives way to
    the Optuna space; jobs keep the stop at 95% compliance, report compliance for pruning (the study's
    direction), and return the general change's lower bound, penalised below the target."""
    SEEN.clear()
    results = hydra_multirun(
        _objective,
        "experiment=demo_forgetting_search",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",
        f"hydra.sweep.dir={tmp_path}/" + "${hydra.sweeper.study_name}",
    )
    assert results["study_name"].startswith("forgetting-")
    assert set(results["best_params"]) == {
        "optimizer.lr",
        "data.sources.general.weight",
        "regularizer.weight",
    }
    for cfg in SEEN:
        assert cfg.regularizer._target_ == "itune.regularizers.KLToBase"
        assert 8e-4 <= cfg.optimizer.lr <= 3e-3 and 0.0 <= cfg.data.sources.general.weight <= 0.3
        on_eval = cfg.callbacks.periodic_eval.on_eval
        assert (
            on_eval.stop_at_target.at_least == 0.95
            and on_eval.optuna.objective == on_eval.stop_at_target.metric
        )
    spec = SEEN[0].optimized_metric
    at_target = {"forgetting/general_delta_lo": -0.1, "eval/disclaimer/ends_with_disclaimer": 0.96}
    short = at_target | {"eval/disclaimer/ends_with_disclaimer": 0.85}
    assert objective_value(at_target, spec) == -0.1
    assert objective_value(short, spec) == pytest.approx(-0.1 - 10 * 0.1)
