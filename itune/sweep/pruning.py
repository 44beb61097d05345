"""Optuna pruning of itune-train jobs: a trial's periodic eval is its intermediate value, and a trial the
pruner gives up on stops before its last step, recorded as pruned (not failed).

How a job reaches its trial: the Optuna sweeper (hydra_plugins.itune_optuna_sweeper) gives each job the
root key `optuna_trial={storage, study, number}` (`trial_override`: an absolute storage URL, the study's
name, the trial's number). `callbacks=optuna_pruning` hangs `OptunaPruning` on the periodic eval
(itune.eval.callback.PeriodicEval, `on_eval`): after every periodic eval it reports one value to the trial
(`trial.report(value, step)`) and, when `trial.should_prune()`, raises `TrialPrunedAt`. The job
(itune.sweep.job) writes `pruned` into status.json and returns `Pruned`; the sweeper tells the study PRUNED.

The pruner is built in the job (Optuna stores no pruner with the study), from this callback's config.
Nothing is pruned (the periodic eval only logs) for a run without `optuna_trial` (a plain run, a resume of
a trial's job), a trial that is already finished, a study the job cannot reach (a launcher on another
machine needs the storage there too: a shared file system or a database URL), or a multi-objective study:
Optuna's `Trial.report` is single-objective only, so pruning goes with the constrained objective
(hparams_search=forgetting_mitigation).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from omegaconf import OmegaConf

from itune.sweep.criterion import Criterion, objective_directions, objective_value

if TYPE_CHECKING:  # the sweeper imports this module: keep lightning out of `itune-train --help`
    import lightning as L

log = logging.getLogger(__name__)

TRIAL_KEY = "optuna_trial"  # the root key of train.yaml the sweeper sets for each job
DEFAULT_OBJECTIVE = "eval/disclaimer/ends_with_disclaimer"


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def trial_override(storage: str, study: str, number: int) -> str:
    """The override that tells a job which Optuna trial it is.

    >>> trial_override("sqlite:////tmp/s.db", "forgetting-1a2b", 3)
    "optuna_trial={storage:'sqlite:////tmp/s.db',study:'forgetting-1a2b',number:3}"
    """
    return f"{TRIAL_KEY}={{storage:{_quote(storage)},study:{_quote(study)},number:{int(number)}}}"


class TrialPrunedAt(optuna.TrialPruned):
    """optuna.TrialPruned with the step and the intermediate value it was pruned at."""

    def __init__(self, message: str = "", step: int | None = None, value: float | None = None) -> None:
        super().__init__(message)
        self.step, self.value = step, value

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self), self.step, self.value)


@dataclass(frozen=True)
class Pruned:
    """What a pruned job returns to the sweeper (picklable, for launchers that run jobs elsewhere)."""

    reason: str
    step: int | None = None
    value: float | None = None

    @classmethod
    def from_error(cls, error: optuna.TrialPruned) -> Pruned:
        """From the exception that stopped the job."""
        return cls(str(error) or "pruned", getattr(error, "step", None), getattr(error, "value", None))


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def intermediate_value(metrics: Mapping[str, float], spec: str | Mapping[str, Any]) -> float:
    """The value reported to the trial: `optimized_metric`-style spec on the periodic eval's metrics.

    >>> intermediate_value({"eval/d/ok": 0.5, "eval/g/ok": 0.5}, {"metric": "eval/d/ok",
    ...     "at_least": {"eval/g/ok": 0.75}, "penalty": 1.0})
    0.25
    """
    criterion = Criterion.parse(spec)
    missing = [k for k in (criterion.metric, *criterion.at_least, *criterion.at_most) if k not in metrics]
    if missing:
        raise ValueError(
            f"the pruning objective uses {missing}, which the periodic eval does not measure (it has "
            f"{sorted(metrics)}): add the suite to callbacks.periodic_eval.suites or change "
            "callbacks.periodic_eval.on_eval.optuna.objective"
        )
    value = objective_value(metrics, spec)
    assert isinstance(value, float)
    return value


def open_trial(
    spec: Mapping[str, Any], pruner: optuna.pruners.BasePruner | None, direction: str
) -> tuple[optuna.trial.Trial | None, str]:
    """(the running trial of `spec`, loaded with `pruner`, "") or (None, why it is not pruned).

    Raises ValueError when the study's direction is not the objective's `direction`.
    """
    storage = optuna.storages.get_storage(str(spec["storage"]))
    name, number = str(spec["study"]), int(spec["number"])
    study_id = storage.get_study_id_from_name(name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    state = storage.get_trial(trial_id).state
    if state != optuna.trial.TrialState.RUNNING:
        return None, f"trial {number} of study {name} is {state.name} already (a rerun of its job)"
    directions = [d.name.lower() for d in storage.get_study_directions(study_id)]
    if len(directions) > 1:
        return None, f"study {name} is multi-objective, and Optuna prunes single-objective studies only"
    if directions[0] != direction:
        raise ValueError(
            f"the pruning objective is to {direction} but study {name} is to {directions[0]}: pick a periodic"
            " eval metric that goes the study's way (callbacks.periodic_eval.on_eval.optuna.objective)"
        )
    sampler = optuna.samplers.RandomSampler()  # the job only reports; the sweeper's sampler suggests
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    return optuna.trial.Trial(study, trial_id), ""


class OptunaPruning:
    """Report each periodic eval to the job's Optuna trial; stop the job when the pruner says so.

    An `on_eval` hook of itune.eval.callback.PeriodicEval (conf/callbacks/optuna_pruning.yaml). Rank 0
    reports, every rank gets the decision, so a multi-GPU job stops on all of them.

    Args:
        trial: `${optuna_trial}`, {storage, study, number}, set by the sweeper; null: nothing is reported.
        objective: the intermediate value from the periodic eval's metrics, a metric name or
            {metric, at_least, at_most, penalty} (itune.sweep.criterion); it must go the study's direction.
        pruner: an Optuna pruner (None: Optuna's MedianPruner).
    """

    def __init__(
        self,
        trial: Mapping[str, Any] | None = None,
        objective: str | Mapping[str, Any] = DEFAULT_OBJECTIVE,
        pruner: optuna.pruners.BasePruner | None = None,
    ) -> None:
        self.spec: dict[str, Any] | None = _plain(trial)
        self.objective = _plain(objective)
        if not isinstance(self.objective, str | dict):
            raise ValueError(
                f"pruning objective: a metric name or {{metric, at_least, …}}, not {objective!r}"
            )
        self.direction = (objective_directions(self.objective) or ["maximize"])[0]
        self.pruner = pruner
        self._trial: optuna.trial.Trial | None = None
        self._off = "" if self.spec is not None else "no optuna_trial (not a job of an Optuna sweep)"

    def __call__(self, trainer: L.Trainer, metrics: dict[str, float]) -> None:
        """Report the periodic eval at the current step; raise TrialPrunedAt if the trial is pruned."""
        step = trainer.global_step
        verdict: tuple[bool, float | None] = (False, None)
        if trainer.is_global_zero:
            verdict = self.report(step, metrics)
        prune, value = trainer.strategy.broadcast(verdict, src=0)
        if prune:
            number = (self.spec or {}).get("number")
            raise TrialPrunedAt(
                f"trial {number} pruned at step {step} ({self.describe()} = {value:.4g})", step, value
            )

    def describe(self) -> str:
        """The reported objective in words."""
        return (
            self.objective if isinstance(self.objective, str) else Criterion.parse(self.objective).describe()
        )

    def report(self, step: int, metrics: Mapping[str, float]) -> tuple[bool, float | None]:
        """(whether the pruner stops the trial, the reported value); (False, None) when not pruning."""
        trial = self._open()
        if trial is None:
            return False, None
        value = intermediate_value(metrics, self.objective)
        trial.report(value, step)
        prune = trial.should_prune()
        log.info(
            "optuna trial %d: step %d, %s = %.4g%s",
            trial.number,
            step,
            self.describe(),
            value,
            " -> pruned" if prune else "",
        )
        return prune, value

    def _open(self) -> optuna.trial.Trial | None:
        """The trial, loaded at the first report; None (said once) when this job is not pruned."""
        if self._trial is None and not self._off:
            assert self.spec is not None
            try:
                self._trial, self._off = open_trial(self.spec, self.pruner, self.direction)
            except ValueError:  # a pruning config that cannot work: say so, fail the job
                raise
            except Exception as e:  # e.g. a launcher on another machine, without the study's file
                self._off = f"the study cannot be reached from here ({type(e).__name__}: {e})"
            if self._off:
                log.warning("optuna pruning is off: %s; the periodic eval only logs", self._off)
        return self._trial
