"""What an Optuna study was run with, and which of its trials count.

A study's trials are comparable only when everything but the searched keys is the same. The sweeper keeps
a flat copy of that fixed config and its hash in the study's user attrs, names the study after the hash by
default (`study_name: forgetting-{hash}`), and refuses to add trials to a study that was run with another
fixed config unless `hydra.sweeper.allow_changed_config=true`.

`n_trials` is the study's total, whichever processes run its trials (itune.sweep.shared). The trials that
count towards it ran to an end: COMPLETE, PRUNED, or FAIL told by the sweeper for a job or launcher that
failed (the trial's `itune_failed` attr says why). A FAIL without it never ran to an end: cut short by
Ctrl-C or SIGTERM (`itune_interrupted` says how), left RUNNING by a sweeper that died (found stale, see
itune.sweep.shared), or given back unused; it does not count, so a resume (or another process) replaces it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, Trial, TrialState

log = logging.getLogger(__name__)

CONFIG_ATTR = "itune_fixed_config"
HASH_ATTR = "itune_fixed_config_hash"
FAILED_ATTR = "itune_failed"  # trial attrs: why a trial that counts failed ...
INTERRUPTED_ATTR = "itune_interrupted"  # ... how one that does not count was cut short
UNUSED_ATTR = "itune_unused"  # ... why one was given back before its job started
IGNORED_ROOT_KEYS = ("hydra", "run_dir", "optuna_trial")  # where a job writes and reports, not what it does
RECORD_WAIT_S = 10.0  # how long a process that found a new study waits for its creator to record its config


class StudyConfigError(ValueError):
    """An existing study was run with another fixed config."""


def _flatten(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict) and node:
        out: dict[str, str] = {}
        for key, value in node.items():
            out |= _flatten(value, f"{prefix}{key}.")
        return out
    return {prefix.rstrip("."): json.dumps(node, sort_keys=True, default=str)}


def fixed_config(cfg: DictConfig, searched: Iterable[str]) -> dict[str, str]:
    """A job's config without the IGNORED_ROOT_KEYS and the searched keys, as {dotted key: JSON value}.

    Interpolations stay unresolved (`${hydra:…}` needs a running job); the overrides are applied.

    >>> fixed_config(OmegaConf.create({"run_dir": "x", "optimizer": {"lr": 0.1, "wd": 0}}), ["optimizer.lr"])
    {'optimizer.wd': '0'}
    """
    plain = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(plain, dict)
    flat = _flatten({k: v for k, v in plain.items() if k not in IGNORED_ROOT_KEYS})
    bare = [key.lstrip("+~").split("@")[0] for key in searched]
    return {k: v for k, v in flat.items() if not any(k == s or k.startswith(f"{s}.") for s in bare)}


def config_hash(flat: Mapping[str, str]) -> str:
    """8 hex digits of the sha256 of a flat config (the same config, the same hash)."""
    return hashlib.sha256(json.dumps(dict(flat), sort_keys=True).encode()).hexdigest()[:8]


def describe_changes(old: Mapping[str, str], new: Mapping[str, str], limit: int = 4) -> str:
    """`key old → new` for the keys that differ, the first `limit` of them.

    >>> describe_changes({"a": "1", "b": "2"}, {"a": "3", "c": "4"})
    'a: 1 → 3, b: 2 → (unset), c: (unset) → 4'
    """
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    parts = [f"{k}: {old.get(k, '(unset)')} → {new.get(k, '(unset)')}" for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(parts) + more if keys else "no key differs (the hash does)"


def check_fixed_config(
    study: optuna.Study, flat: Mapping[str, str], allow_changes: bool, created: bool = True
) -> None:
    """Record the fixed config in a new study; refuse (or, if allowed, warn about) a changed one.

    `created`: this process created the study. Another process that loads a study without a record waits
    (RECORD_WAIT_S) for its creator's, so two processes starting one study with different configs do not
    both record theirs.
    """
    digest = config_hash(flat)
    stored = study.user_attrs.get(HASH_ATTR)
    deadline = time.monotonic() + RECORD_WAIT_S
    while stored is None and not created and not study.trials and time.monotonic() < deadline:
        time.sleep(0.2)
        stored = study.user_attrs.get(HASH_ATTR)
    if stored is None:
        if study.trials:
            log.warning(
                "study %s has %d trials but no record of its fixed config; recording this one",
                study.study_name,
                len(study.trials),
            )
        study.set_user_attr(CONFIG_ATTR, dict(flat))  # the config first: whoever sees the hash finds it
        study.set_user_attr(HASH_ATTR, digest)
        return
    if stored == digest:
        return
    message = (
        f"Optuna study {study.study_name!r} was run with another fixed config "
        f"({describe_changes(study.user_attrs.get(CONFIG_ATTR) or {}, flat)}), so its trials are not "
        "comparable with these: name another study (hydra.sweeper.study_name; `<name>-{hash}` names one per "
        "config) or add hydra.sweeper.allow_changed_config=true to add trials anyway"
    )
    if not allow_changes:
        raise StudyConfigError(message)
    log.warning("%s (allowed: adding trials)", message)


def counts(trial: FrozenTrial) -> bool:
    """Whether a trial counts towards `n_trials`: it ran to an end (see the module docstring)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and FAILED_ATTR in trial.user_attrs


def trials_done(study: optuna.Study) -> int:
    """The study's trials that count towards `n_trials`."""
    return sum(counts(t) for t in study.get_trials(deepcopy=False))


def occupied(trials: Iterable[FrozenTrial], before: int | None = None) -> int:
    """Slots of `n_trials` taken: trials that count or are RUNNING (of those numbered below `before`)."""
    return sum(
        (counts(t) or t.state == TrialState.RUNNING) and (before is None or t.number < before) for t in trials
    )


def _fail(study: optuna.Study, trial: Trial | FrozenTrial, attr: str, why: str) -> bool:
    """Record `why` in the trial's `attr` and tell it FAIL; False when it was finished already."""
    try:
        study._storage.set_trial_user_attr(trial._trial_id, attr, why[:500])
    except UpdateFinishedTrialError:  # another process failed it first (a stale trial)
        return False
    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    return True


def mark_failed(study: optuna.Study, trial: Trial | FrozenTrial, why: str) -> None:
    """Tell FAIL a trial whose job or launcher failed: it counts towards `n_trials`."""
    _fail(study, trial, FAILED_ATTR, why)


def mark_interrupted(study: optuna.Study, trials: Iterable[Trial | FrozenTrial], why: str) -> list[int]:
    """Tell FAIL the trials cut short (if still running): they do not count. Returns those failed here."""
    return [t.number for t in trials if _fail(study, t, INTERRUPTED_ATTR, why)]


def give_back(study: optuna.Study, trial: Trial, why: str) -> None:
    """Tell FAIL a trial asked but not run (another process took its slot): it does not count."""
    _fail(study, trial, UNUSED_ATTR, why)
