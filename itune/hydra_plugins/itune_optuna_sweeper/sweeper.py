"""OptunaSweeper: each trial is one itune-train job launched by the configured launcher; its return value
(`optimized_metric` from metrics.json) is the objective. Seeded by the sampler; resumable: the study lives
in `storage` (SQLite on disk by default), and rerunning the same command runs only the missing trials.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from itune.sweep.optuna import FINISHED, as_values, ensure_storage_dir, search_space, trial_overrides

log = logging.getLogger(__name__)


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


class OptunaSweeper(Sweeper):
    """Args (conf/hydra/sweeper/itune_optuna.yaml):
    sampler: an Optuna sampler (or its `_target_` node), e.g. TPESampler with a seed.
    direction: maximize | minimize, or a list of them for several objectives.
    study_name / storage: where the study lives (`sqlite:///…` is created on disk; null: in memory).
    n_trials: trials the study should have in total; a resumed study runs only the missing ones.
    n_jobs: trials per batch, launched together (in parallel with joblib or submitit launchers).
    params: {key: sweep override}, e.g. {optimizer.lr: "tag(log, interval(1e-5, 1e-3))"}.
    """

    def __init__(
        self,
        sampler: Any = None,
        direction: Any = "maximize",
        study_name: str | None = None,
        storage: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        params: Any = None,
    ) -> None:
        self.sampler = instantiate(sampler) if isinstance(sampler, DictConfig | dict) else sampler
        plain = OmegaConf.to_container(direction) if isinstance(direction, ListConfig) else direction
        self.directions = [str(d) for d in plain] if isinstance(plain, list | tuple) else [str(plain)]
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        plain = OmegaConf.to_container(params) if isinstance(params, DictConfig) else dict(params or {})
        self.params = _flatten(plain)  # `hydra.sweeper.params.optimizer.lr=…` nests; `optimizer.lr:` does not
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        args = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        space, fixed = search_space(parser.parse_overrides(args))
        if not space:
            raise ValueError("hydra.sweeper.params has no sweep (choice/range/interval): nothing to search")
        ensure_storage_dir(self.storage)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            sampler=self.sampler,
            directions=self.directions,
            load_if_exists=True,
        )
        done = sum(t.state in FINISHED for t in study.trials)
        stale = sum(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)
        log.info(
            "Optuna study %s in %s: %d of %d trials done", study.study_name, self.storage, done, self.n_trials
        )
        if stale:
            log.warning("%d trials were left RUNNING by an interrupted sweep; they are not counted", stale)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        while done < self.n_trials:
            trials = [study.ask() for _ in range(min(self.n_jobs, self.n_trials - done))]
            batch = [tuple(fixed + trial_overrides(t, space)) for t in trials]
            self.validate_batch_is_legal(batch)
            returns = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            for trial, ret in zip(trials, returns, strict=True):
                try:
                    values = as_values(ret.return_value, len(self.directions))
                except Exception as e:  # the job raised: Hydra kept the exception
                    log.warning("trial %d failed: %s", trial.number, e)
                    values = None
                if values is None:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, values)
            done += len(trials)
        return self._save_results(study, sweep_dir)

    def _save_results(self, study: optuna.Study, sweep_dir: Path) -> Any:
        """optimization_results.yaml in the sweep dir: the best trial(s) with params and values."""
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": study.study_name,
            "storage": self.storage,
            "trials": len(study.trials),
            "complete": len(complete),
        }
        if complete and len(self.directions) == 1:
            best = study.best_trial
            results |= {"best_trial": best.number, "best_params": best.params, "best_value": best.value}
        elif complete:
            results["best_trials"] = [
                {"number": t.number, "params": t.params, "values": t.values} for t in study.best_trials
            ]
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        log.info("Optuna results: %s", results)
        return results
