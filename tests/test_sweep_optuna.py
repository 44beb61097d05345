"""hparams_search=forgetting_optuna: search space parsing; a real 2-trial study on tiny runs, resumed to 3."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from itune.sweep.criterion import objective_value
from itune.sweep.optuna import as_values, search_space
from tests.test_sweep import TINY, command


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
            "at_least": {"forgetting/general_delta": -0.05},
            "penalty": 10.0,
        }
        status = json.loads((job / "status.json").read_text())
        assert status["objective"] == pytest.approx(objective_value(metrics, spec))
    results = yaml.safe_load((tmp_path / "study" / "optimization_results.yaml").read_text())
    assert results["complete"] == 2 and "optimizer.lr" in results["best_params"]

    again = command("itune-train", *args, "hydra.sweeper.n_trials=3", cwd=tmp_path)  # resume: one more trial
    assert again.returncode == 0, again.stderr[-4000:]
    study = optuna.load_study(study_name="forgetting", storage=storage)
    assert len(study.trials) == 3 and (tmp_path / "study" / "2" / "metrics.json").is_file()
    assert not (tmp_path / "study" / "3").exists()
