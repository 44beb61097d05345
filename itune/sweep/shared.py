"""A study shared by several sweep processes, on one machine or many, through one RDB storage URL
(`hydra.sweeper.storage=postgresql://…`, or a SQLite file on one machine).

Each process asks its trials from the study; Optuna numbers trials under a lock, so no two processes get
the same trial, and a process seeds its sampler with its first trial's number (itune.sweep.optuna), so
they suggest different params. `n_trials` is the study's total: a process asks only for the free slots
(n_trials minus the trials that count or run, itune.sweep.study) and gives back a trial asked in the
same instant as another process's last one (`beyond_n_trials`), so no process runs more than its share.

Which RUNNING trials are alive: the sweeper that asked a trial records itself in it (`itune_sweeper`:
host:pid) and beats for it while the job runs (Optuna's RDB heartbeat, on the database's clock). A
RUNNING trial is stale, told FAIL and run again when its heartbeat is older than STALE_BEATS heartbeats
(a dead machine), when its sweeper was on this host and is gone (a killed process: no waiting), or when it
has no sweeper record and started over that long ago (left by an older itune).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from itune.sweep.optuna import redact
from itune.sweep.study import occupied

log = logging.getLogger(__name__)

OWNER_ATTR = "itune_sweeper"  # trial attr: host:pid of the sweep process that asked it
STALE_BEATS = 3  # a RUNNING trial without a heartbeat for this many intervals is stale


def this_sweeper() -> str:
    """`host:pid` of this process, as recorded in the trials it asks."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        return False
    return False


def rdb_storage(
    url: str, heartbeat_s: int, on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None
) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage with heartbeats; `on_stale(study, trial)` for each trial this process fails
    as stale. Retried a few times: processes creating the tables of a new database at once collide."""
    kwargs: dict[str, Any] = {} if url.startswith("sqlite") else {"pool_pre_ping": True}  # hours between jobs
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=kwargs,
                    heartbeat_interval=heartbeat_s,
                    grace_period=STALE_BEATS * heartbeat_s,
                    heartbeat_stale_trial_callback=on_stale,
                )
        except ImportError as e:
            raise ValueError(
                f"hydra.sweeper.storage {url.split(':', 1)[0]}://…: its database driver ({e.name}) is not "
                "installed: pip install 'psycopg[binary]' and write postgresql+psycopg://… (PostgreSQL)"
            ) from e
        except Exception as e:  # sqlalchemy's IntegrityError/ProgrammingError from a concurrent creation
            if attempt == 4:
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise ValueError(
                    f"hydra.sweeper.storage {redact(url)}: cannot open the Optuna study storage "
                    f"({type(e).__name__}: {first}); check the URL and that the database server answers"
                ) from e
            log.info("opening the Optuna storage failed (%s): retrying", type(e).__name__)
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def stale_trials(
    trials: Iterable[FrozenTrial], grace_s: float, now: datetime | None = None
) -> list[FrozenTrial]:
    """RUNNING trials whose sweeper is gone from this host, or that have no sweeper record and started
    over `grace_s` ago (trials of other hosts go stale by heartbeat: `fail_heartbeat_stale`)."""
    now, host, out = now or datetime.now(), socket.gethostname(), []
    for trial in trials:
        if trial.state != TrialState.RUNNING:
            continue
        owner = trial.user_attrs.get(OWNER_ATTR)
        if owner is None:
            start = trial.datetime_start or now
            if now - start > timedelta(seconds=grace_s):
                out.append(trial)
            continue
        owner_host, _, pid = str(owner).rpartition(":")
        if owner_host == host and pid.isdigit() and (int(pid) == os.getpid() or _gone(int(pid))):
            out.append(trial)  # this process asks only when none of its own trials runs
    return out


def fail_heartbeat_stale(study: optuna.Study) -> None:
    """Fail the RUNNING trials whose heartbeat stopped (the storage's `on_stale` hears of each)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def beyond_n_trials(trials: list[FrozenTrial], number: int, n_trials: int) -> bool:
    """Whether trial `number`, just asked, would exceed `n_trials`: the slots are taken by trials numbered
    below it (another process asked in the same instant)."""
    return occupied(trials, before=number) >= n_trials


class Heartbeat:
    """`with Heartbeat(storage, trial_ids, interval_s):` records the trials' heartbeats every `interval_s`
    in a thread while their jobs run (nothing when `storage` is None: an in-memory study)."""

    def __init__(self, storage: optuna.storages.RDBStorage | None, trial_ids: list[int], interval_s: float):
        self.storage, self.trial_ids, self.interval_s = storage, trial_ids, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        assert self.storage is not None
        while True:
            for trial_id in self.trial_ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as e:  # a database hiccup: the next beat tries again
                    log.warning("could not record the heartbeat of trial id %d: %s", trial_id, e)
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> Heartbeat:
        if self.storage is not None:
            self._thread = threading.Thread(target=self._beat, name="itune-optuna-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
