"""What an Optuna study was run with, and which of its trials count.

A study's trials are comparable only when everything but the searched keys is the same. The sweeper keeps
a flat copy of that fixed config and its hash in the study's user attrs, names the study after the hash by
default (`study_name: forgetting-{hash}`), and refuses to add trials to a study that was run with another
fixed config unless `hydra.sweeper.allow_changed_config=true`.

Trials cut short by Ctrl-C, SIGTERM or a killed sweeper are told FAIL (never left RUNNING) and listed in
the study's `itune_interrupted_trials` attr: they do not count towards `n_trials`, so a resume replaces them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

CONFIG_ATTR = "itune_fixed_config"
HASH_ATTR = "itune_fixed_config_hash"
INTERRUPTED_ATTR = "itune_interrupted_trials"
IGNORED_ROOT_KEYS = ("hydra", "run_dir", "optuna_trial")  # where a job writes and reports, not what it does
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)


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


def check_fixed_config(study: optuna.Study, flat: Mapping[str, str], allow_changes: bool) -> None:
    """Record the fixed config in a new study; refuse (or, if allowed, warn about) a changed one."""
    digest = config_hash(flat)
    stored = study.user_attrs.get(HASH_ATTR)
    if stored is None:
        if study.trials:
            log.warning(
                "study %s has %d trials but no record of its fixed config; recording this one",
                study.study_name,
                len(study.trials),
            )
        study.set_user_attr(HASH_ATTR, digest)
        study.set_user_attr(CONFIG_ATTR, dict(flat))
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


def interrupted_trials(study: optuna.Study) -> set[int]:
    """Numbers of the trials recorded as interrupted."""
    return {int(n) for n in study.user_attrs.get(INTERRUPTED_ATTR, [])}


def mark_interrupted(study: optuna.Study, numbers: Iterable[int]) -> None:
    """Tell these trials FAIL (if still running) and record them as interrupted."""
    numbers = set(numbers)
    if not numbers:
        return
    for number in sorted(numbers):
        study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    study.set_user_attr(INTERRUPTED_ATTR, sorted(interrupted_trials(study) | numbers))


def trials_done(study: optuna.Study) -> int:
    """Finished trials (complete, failed or pruned) that count towards `n_trials`: not the interrupted."""
    skip = interrupted_trials(study)
    return sum(t.state in FINISHED and t.number not in skip for t in study.trials)
