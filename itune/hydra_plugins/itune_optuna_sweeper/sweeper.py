"""OptunaSweeper: each trial is one itune-train job launched by the configured launcher; its return value
(`optimized_metric` from metrics.json) is the objective. Seeded by the sampler; resumable: the study lives
in `storage` (SQLite on disk by default), and rerunning the same command runs only the missing trials,
continuing the sampler's sequence. A study is tied to its fixed (non-searched) config (itune.sweep.study).
Several processes (machines) can run one study through a shared storage URL, `n_trials` in total
(itune.sweep.shared). Each job gets `optuna_trial={storage, study, number}` so it can report to its trial
and be pruned (itune.sweep.pruning); a pruned job returns `Pruned` and its trial is told PRUNED (a failed
one FAIL). A job's number (`hydra.job.num`, the preset's sweep subdir) is its trial's number.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf, flag_override

from itune.sweep.criterion import objective_directions
from itune.sweep.optuna import (
    absolute_storage,
    as_values,
    build_sampler,
    check_space_keys,
    ensure_storage_dir,
    fill_placeholders,
    redact,
    search_space,
    trial_overrides,
)
from itune.sweep.pruning import Pruned, trial_override
from itune.sweep.shared import (
    OWNER_ATTR,
    STALE_BEATS,
    Heartbeat,
    beyond_n_trials,
    fail_heartbeat_stale,
    rdb_storage,
    stale_trials,
    this_sweeper,
)
from itune.sweep.study import (
    check_fixed_config,
    config_hash,
    fixed_config,
    give_back,
    mark_failed,
    mark_interrupted,
    occupied,
    trials_done,
)

log = logging.getLogger(__name__)


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


def _runs(trials: list[optuna.trial.Trial]) -> list[list[optuna.trial.Trial]]:
    """The trials in runs of consecutive numbers (one launch each, so that job numbers are trial numbers).

    >>> [[t.number for t in run] for run in _runs([type("T", (), {"number": n})() for n in (4, 5, 7)])]
    [[4, 5], [7]]
    """
    out: list[list[optuna.trial.Trial]] = []
    for trial in sorted(trials, key=lambda t: t.number):
        if out and trial.number == out[-1][-1].number + 1:
            out[-1].append(trial)
        else:
            out.append([trial])
    return out


class OptunaSweeper(Sweeper):
    """Args (conf/hydra/sweeper/itune_optuna.yaml):
    sampler: an Optuna sampler's `_target_` node, e.g. TPESampler with a seed (a resumed study seeds it with
        seed + its number of trials, so it continues instead of repeating its first suggestions).
    direction: maximize | minimize, or a list of them for several objectives.
    study_name: the study's name; `{hash}` in it is replaced by the hash of the fixed config, so another
        fixed setup gets its own study (and sweep dir, when `hydra.sweep.dir` uses the name).
    storage: where the study lives (`sqlite:///…` is created on disk; `postgresql://user@host/db` is shared
        by processes on several machines; null: in memory).
    n_trials: trials the study should have in total, whichever processes run them; a resumed study runs only
        the missing ones, and processes sharing the study split them.
    n_jobs: trials per batch, launched together (in parallel with joblib or submitit launchers).
    heartbeat_s: a running trial's sweeper records a heartbeat this often; a trial without one for
        3 heartbeats (its machine died) is failed and run again by a process sharing the study.
    params: {key: sweep}, e.g. {optimizer.lr: "tag(log, interval(1e-5, 1e-3))"}; `{name}` in a key is filled
        from `vars` (a null var leaves the key out). Command-line sweeps and values of the same key win.
    vars: {name: value} for the placeholders of `params` keys, e.g. {general_source: general}.
    allow_changed_config: add trials to an existing study whose fixed config differs (default: refuse).
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
        vars: Any = None,  # noqa: A002 (the config key users type)
        allow_changed_config: bool = False,
        heartbeat_s: int = 60,
    ) -> None:
        del sampler  # built in `sweep` from its config node, seeded at this process's first trial
        plain = _plain(direction)
        self.directions = [str(d) for d in plain] if isinstance(plain, list | tuple) else [str(plain)]
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        self.params = _flatten(_plain(params) or {})  # `+hydra.sweeper.params.a.b=…` nests; `a.b:` does not
        self.vars: dict[str, Any] = dict(_plain(vars) or {})
        self.allow_changed_config = bool(allow_changed_config)
        if int(heartbeat_s) < 1:
            raise ValueError(f"hydra.sweeper.heartbeat_s={heartbeat_s}: give a number of seconds, at least 1")
        self.heartbeat_s = int(heartbeat_s)
        self.config: DictConfig | None = None
        self._rdb: optuna.storages.RDBStorage | None = None  # the storage object, for heartbeats

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        params = fill_placeholders(self.params, self.vars)
        space, fixed = search_space(
            parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + arguments)
        )
        if not space:
            raise ValueError("hydra.sweeper.params has no sweep (choice/range/interval): nothing to search")
        job_config = self.hydra_context.config_loader.load_sweep_config(self.config, fixed)
        hint = f"; hydra.sweeper.vars fill the preset's placeholders ({self.vars})" if self.vars else ""
        check_space_keys(job_config, space, hint)
        self._check_directions(job_config.get("optimized_metric"))
        fixed_cfg = fixed_config(job_config, space)
        study, created = self._open_study(config_hash(fixed_cfg))
        check_fixed_config(study, fixed_cfg, self.allow_changed_config, created=created)
        spec = self.config.hydra.sweeper.get("sampler")  # Hydra passes __init__ a built one: rebuild it
        if spec is not None:
            study.sampler = build_sampler(spec)
        self._fail_stale(study)
        trials = study.get_trials(deepcopy=False)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        log.info(
            "Optuna study %s in %s: %d of %d trials done, %d running in other processes; jobs in %s",
            study.study_name,
            redact(self.storage),
            trials_done(study),
            self.n_trials,
            sum(t.state == optuna.trial.TrialState.RUNNING for t in trials),
            sweep_dir,
        )
        if not self.storage:
            log.info("hydra.sweeper.storage is null: the jobs cannot reach the study, so none is pruned")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        while (free := self.n_trials - occupied(study.get_trials(deepcopy=False))) > 0:
            with warnings.catch_warnings():  # "heartbeat is supposed to be used with optimize": it beats here
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                asked = [study.ask() for _ in range(min(self.n_jobs, free))]
            trials = self._claim(study, asked)
            if trials:
                self._run_batch(study, trials, fixed, space)
            self._fail_stale(study)
        trials = study.get_trials(deepcopy=False)
        running = [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        if running:
            log.info(
                "the study's other trials (%s) run in other processes: this one is done (the last to finish "
                "writes the final results; a rerun replaces the trials of a process that died)",
                running,
            )
        return self._save_results(study, sweep_dir)

    def _fail_stale(self, study: optuna.Study) -> None:
        """Fail the RUNNING trials of sweepers that died, so that they are run again (itune.sweep.shared)."""
        if self._rdb is not None:
            fail_heartbeat_stale(study)
        stale = stale_trials(study.get_trials(deepcopy=False), STALE_BEATS * self.heartbeat_s)
        failed = mark_interrupted(study, stale, "its sweep process stopped (found stale)")
        if failed:
            log.warning("trials %s were left RUNNING by a stopped sweep: marked FAIL, run again", failed)

    def _on_stale(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        log.warning(
            "trial %d of %s (sweep process %s) sent no heartbeat for %d s: marked FAIL, to be run again",
            trial.number,
            study.study_name,
            trial.user_attrs.get(OWNER_ATTR, "?"),
            STALE_BEATS * self.heartbeat_s,
        )

    def _claim(self, study: optuna.Study, asked: list[optuna.trial.Trial]) -> list[optuna.trial.Trial]:
        """Record this process in the asked trials; give back those beyond `n_trials` (another process
        asked in the same instant). Returns the trials to run."""
        for trial in asked:
            if self._rdb is not None:
                self._rdb.record_heartbeat(trial._trial_id)  # before the owner: see itune.sweep.shared
            trial.set_user_attr(OWNER_ATTR, this_sweeper())
        trials = study.get_trials(deepcopy=False)
        keep = []
        for trial in asked:
            if beyond_n_trials(trials, trial.number, self.n_trials):
                give_back(study, trial, f"n_trials={self.n_trials} were taken by other processes")
                log.info("trial %d given back: the study's %d trials are taken", trial.number, self.n_trials)
            else:
                keep.append(trial)
        return keep

    def _check_directions(self, spec: Any) -> None:
        """Warn when `hydra.sweeper.direction` goes against what `optimized_metric` names (e.g. a loss)."""
        expected = objective_directions(_plain(spec))
        if expected and expected != self.directions:
            log.warning(
                "hydra.sweeper.direction is %s but optimized_metric %s reads as %s: set "
                "hydra.sweeper.direction=%s unless that is meant",
                self.directions,
                _plain(spec),
                expected,
                expected[0] if len(expected) == 1 else f"[{','.join(expected)}]",
            )

    def _open_study(self, digest: str) -> tuple[optuna.Study, bool]:
        """Create or load the study; `{hash}` in its name becomes `digest`, for the jobs' config too.
        Returns (the study, whether this process created it)."""
        assert self.config is not None
        name = self.study_name
        if name and "{hash}" in name:
            name = name.replace("{hash}", digest)
            if not re.fullmatch(r"[\w.\-]+", name):
                raise ValueError(
                    f"hydra.sweeper.study_name {name!r}: use letters, digits, _ . - with {{hash}}"
                )
            with flag_override(self.config, ["struct", "readonly"], [False, False]):
                self.config.hydra.sweeper.study_name = name  # hydra.sweep.dir may interpolate it
                self.config.hydra.overrides.hydra.append(f"hydra.sweeper.study_name={name}")  # for the jobs
        ensure_storage_dir(self.storage)
        storage: Any = None
        if self.storage:
            storage = self._rdb = rdb_storage(self.storage, self.heartbeat_s, self._on_stale)
        try:
            study = optuna.create_study(study_name=name, storage=storage, directions=self.directions)
            return study, True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.create_study(
                study_name=name, storage=storage, directions=self.directions, load_if_exists=True
            )
            return study, False

    def _run_batch(
        self, study: optuna.Study, trials: list[optuna.trial.Trial], fixed: list[str], space: dict[str, Any]
    ) -> None:
        """Launch one batch of trials and tell the study each result; none is left RUNNING. Each run of
        consecutive trial numbers is one launch (another process's trials can come between)."""
        pending = sorted(trials, key=lambda t: t.number)
        with Heartbeat(self._rdb, [t._trial_id for t in trials], self.heartbeat_s):
            for run in _runs(trials):
                try:
                    batch = [tuple(fixed + trial_overrides(t, space) + self._reach(study, t)) for t in run]
                    returns = self.launcher.launch(batch, initial_job_idx=run[0].number)
                except Exception as e:  # the launcher could not run it (e.g. a value the config refuses)
                    for trial in run:
                        mark_failed(study, trial, f"the launcher failed: {e}")
                    mark_interrupted(study, pending[len(run) :], "not launched: the launcher failed")
                    log.error("the launcher failed; trials %s marked FAIL: %s", [t.number for t in run], e)
                    raise
                except BaseException:  # Ctrl-C, SIGTERM: a resume runs these again
                    mark_interrupted(study, pending, "the sweep was stopped (Ctrl-C or SIGTERM)")
                    raise
                for trial, ret in zip(run, returns, strict=True):
                    self._tell(study, trial, ret)
                pending = pending[len(run) :]

    def _reach(self, study: optuna.Study, trial: optuna.trial.Trial) -> list[str]:
        """The `optuna_trial` override by which a job reports to its trial (none for in-memory studies)."""
        if not self.storage:
            return []
        return [trial_override(absolute_storage(self.storage), study.study_name, trial.number)]

    def _tell(self, study: optuna.Study, trial: optuna.trial.Trial, ret: JobReturn) -> None:
        """Tell the study how a job ended: its values, PRUNED or FAIL."""
        state = study.get_trials(deepcopy=False)[trial.number].state
        if state.is_finished():  # failed as stale by another process while this one was cut off
            log.warning("trial %d was told %s meanwhile (kept in its job dir)", trial.number, state.name)
            return
        if ret.status == JobStatus.COMPLETED and isinstance(ret.return_value, Pruned):
            log.info("trial %d: PRUNED", trial.number)  # the job logged why
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return
        try:
            values = as_values(ret.return_value, len(self.directions))
        except optuna.TrialPruned as e:  # a task that raised it instead of returning Pruned
            log.info("trial %d pruned: %s", trial.number, e)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return
        except Exception as e:  # the job raised: Hydra kept the exception
            log.warning("trial %d failed: %s", trial.number, e)
            mark_failed(study, trial, f"the job raised {type(e).__name__}: {e}")
            return
        if values is None:
            mark_failed(study, trial, f"the job returned no usable objective: {ret.return_value!r}")
        else:
            study.tell(trial, values)

    def _save_results(self, study: optuna.Study, sweep_dir: Path) -> Any:
        """optimization_results.yaml in the sweep dir: the best trial(s) with params and values."""
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": study.study_name,
            "storage": redact(self.storage),
            "trials": len(study.trials),
            "complete": len(complete),
            "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
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
