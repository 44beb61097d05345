"""One Optuna study shared by several sweep processes through an RDB storage URL (PostgreSQL, as on several
machines): they split `n_trials` (the study's total) with no trial or params run twice, a resume adds only
the missing trials and replaces those of a dead process, and the fixed-config check holds between them.

The storage: $ITUNE_TEST_POSTGRES_URL (.ci/run starts Debian's server and sets it), else a throwaway
PostgreSQL server started here when its binaries are installed ($ITUNE_TEST_POSTGRES_BIN, by default
/usr/lib/postgresql/*/bin), else a SQLite file, which the run says (a warning, a line in the terminal and
a skipped `test_the_shared_study_ran_on_postgresql` in the summary).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from omegaconf import DictConfig

from itune.sweep.optuna import redact
from itune.sweep.shared import (
    OWNER_ATTR,
    Heartbeat,
    beyond_n_trials,
    fail_heartbeat_stale,
    rdb_storage,
    stale_trials,
)
from itune.sweep.study import FAILED_ATTR, INTERRUPTED_ATTR, UNUSED_ATTR, StudyConfigError, counts, occupied
from tests.conftest import optuna_sweep

ROOT = Path(__file__).resolve().parents[1]
URL_ENV = "ITUNE_TEST_POSTGRES_URL"
BIN_GLOB = os.environ.get("ITUNE_TEST_POSTGRES_BIN", "/usr/lib/postgresql/*/bin")  # where to find initdb


class StorageFallbackWarning(RuntimeWarning):
    """The shared-study tests could not reach PostgreSQL and ran on SQLite."""


def _reachable(url: str) -> str | None:
    """None when `url` answers, else why not."""
    try:
        import sqlalchemy

        with sqlalchemy.create_engine(url).connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _throwaway_server() -> Iterator[str]:
    """Start a PostgreSQL server in a temporary folder (trust auth, 127.0.0.1); yield its URL; remove it."""
    (bin_dir,) = sorted(glob.glob(BIN_GLOB))[-1:]
    data = Path(tempfile.mkdtemp(prefix="itune-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = _free_port()
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    try:
        subprocess.run(
            _as_postgres([f"{bin_dir}/initdb", "-D", f"{data}/db", "-A", "trust", "-U", "postgres"]), **run
        )
        options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        start = [f"{bin_dir}/pg_ctl", "-D", f"{data}/db", "-o", options, "-l", f"{data}/log", "-w", "start"]
        subprocess.run(_as_postgres(start), **run)
        subprocess.run(
            [f"{bin_dir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "itune"], **run
        )
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/itune"
    finally:
        stop = [f"{bin_dir}/pg_ctl", "-D", f"{data}/db", "-m", "immediate", "-w", "stop"]
        subprocess.run(_as_postgres(stop), capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def storage(request, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(storage URL, what it is): PostgreSQL when it can be had, else SQLite, said plainly."""
    url = os.environ.get(URL_ENV)
    if url:
        why = _reachable(url)
        if why:
            pytest.fail(f"{URL_ENV}={url} does not answer ({why}): start the server or unset it")
        yield url, f"PostgreSQL from {URL_ENV}"
        return
    have_driver = True
    try:
        import psycopg  # noqa: F401
    except ImportError:
        have_driver = False
    binaries = glob.glob(f"{BIN_GLOB}/initdb")
    can_run = os.geteuid() != 0 or shutil.which("runuser") is not None
    why = "no PostgreSQL binaries (apt-get install postgresql)" if not binaries else ""
    why = why or ("" if have_driver else "no driver (pip install 'psycopg[binary]')")
    why = why or ("" if can_run else "running as root without runuser")
    if not why:
        server = _throwaway_server()
        try:
            yield next(server), "a throwaway PostgreSQL server"
        except subprocess.CalledProcessError as e:
            why = f"the throwaway server did not start: {e.stderr.strip()[-300:]}"
        else:
            server.close()
            return
    message = f"shared-study tests ran on SQLite, not PostgreSQL: {why}"
    warnings.warn(message, StorageFallbackWarning, stacklevel=1)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\n{message}")
    yield f"sqlite:///{tmp_path_factory.mktemp('shared') / 'study.db'}", message


def test_the_shared_study_ran_on_postgresql(storage, record_property):
    """Reports, as a skip with its reason in pytest's summary, when the other tests fell back to SQLite."""
    record_property("shared_study_storage", storage[1])
    if not storage[0].startswith("postgresql"):
        pytest.skip(storage[1])


def _trial(number: int, state: str, **attrs: Any) -> optuna.trial.FrozenTrial:
    value = 0.0 if state == "COMPLETE" else None
    trial = optuna.trial.create_trial(state=optuna.trial.TrialState[state], value=value, user_attrs=attrs)
    trial.number = number
    return trial


def test_which_trials_are_stale_and_which_slots_are_taken():
    host, now = socket.gethostname(), datetime.now()
    dead = subprocess.Popen(["true"])
    dead.wait()
    trials = [
        _trial(0, "COMPLETE"),
        _trial(1, "FAIL", **{FAILED_ATTR: "out of memory"}),  # counts
        _trial(2, "FAIL", **{INTERRUPTED_ATTR: "Ctrl-C"}),  # does not count
        _trial(3, "RUNNING", **{OWNER_ATTR: f"{host}:{dead.pid}"}),  # its sweeper died on this host
        _trial(4, "RUNNING", **{OWNER_ATTR: f"{host}:1"}),  # alive (pid 1)
        _trial(5, "RUNNING", **{OWNER_ATTR: "elsewhere:123"}),  # another host: its heartbeat tells
        _trial(6, "RUNNING"),  # no sweeper record, just started
    ]
    assert [t.number for t in stale_trials(trials, grace_s=180, now=now)] == [3]
    later = now + timedelta(seconds=200)  # no record and older than the grace period: left by an older itune
    assert [t.number for t in stale_trials(trials, grace_s=180, now=later)] == [3, 6]
    assert occupied(trials) == 6 and occupied(trials, before=3) == 2
    assert not beyond_n_trials(trials, 6, n_trials=6) and beyond_n_trials(trials, 6, n_trials=5)


def test_a_trial_whose_heartbeat_stops_is_failed(storage):
    url, _ = storage
    heard: list[int] = []
    rdb = rdb_storage(url, heartbeat_s=1, on_stale=lambda study, trial: heard.append(trial.number))
    study = optuna.create_study(study_name=f"beat-{uuid.uuid4().hex[:8]}", storage=rdb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial = study.ask()
    with Heartbeat(rdb, [trial._trial_id], interval_s=1):
        time.sleep(4)  # longer than the grace period (3 beats): alive while it beats
        fail_heartbeat_stale(study)
        assert study.trials[0].state.name == "RUNNING"
    time.sleep(4.5)  # the sweeper "died": no beat for over 3 s
    fail_heartbeat_stale(study)
    assert study.trials[0].state.name == "FAIL" and heard == [0] and not counts(study.trials[0])


# The sweeper, driven as `itune-train -m hparams_search=forgetting_optuna` is, with a cheap task for training.


def _task(cfg: DictConfig) -> float:
    """Records which process ran which trial with which params; the first trials wait until both
    processes run one (so that both take part), then return a cheap objective."""
    log_dir = Path(os.environ["ITUNE_TEST_TRIAL_LOG"])
    record = {
        "pid": os.getpid(),
        "number": int(cfg.optuna_trial.number),
        "params": [float(cfg.optimizer.lr), float(cfg.data.sources.general.weight)],
    }
    (log_dir / f"{record['number']}.json").write_text(json.dumps(record))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = {json.loads(p.read_text())["pid"] for p in log_dir.glob("*.json")}
        if len(pids) > 1 or os.environ.get("ITUNE_TEST_ALONE"):
            break
        time.sleep(0.1)
    time.sleep(0.1)  # a job takes a while: the processes' asks interleave
    return -((float(cfg.optimizer.lr) - 1e-3) ** 2)


def multirun(url: str, sweep_root: Path, *overrides: str) -> dict[str, Any]:
    """`itune-train -m hparams_search=forgetting_optuna …` in this process, each job `_task`."""
    return optuna_sweep(
        _task,
        url,
        sweep_root,
        "hydra.sweeper.sampler.n_startup_trials=2",
        "peft.r=8",  # pinned: the searched keys left (lr, the general weight) are continuous
        "scheduler.num_warmup_steps=0",
        *overrides,
    )


def _main(argv: list[str]) -> None:
    """A sweep process: `python -c '…_main(sys.argv[1:])' URL SWEEP_ROOT OVERRIDE…`; exit 3 when the study
    refuses its fixed config."""
    try:
        multirun(argv[0], Path(argv[1]), *argv[2:])
    except StudyConfigError as e:
        print(f"StudyConfigError: {e}", file=sys.stderr)
        raise SystemExit(3) from e


def _start(
    url: str, sweep_root: Path, log_dir: Path, *overrides: str, alone: bool = False
) -> subprocess.Popen:
    """A sweep process (`_main`) in the background; `alone`: its trials do not wait for another's."""
    code = "import sys; from tests.test_shared_study import _main; _main(sys.argv[1:])"
    env = {**os.environ, "ITUNE_TEST_TRIAL_LOG": str(log_dir), "ITUNE_TEST_ALONE": "1" if alone else ""}
    return subprocess.Popen(
        [sys.executable, "-c", code, url, str(sweep_root), *overrides],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


def _records(log_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(log_dir.glob("*.json"))]


def test_two_sweep_processes_split_one_study_then_resume(storage, tmp_path, monkeypatch):
    url, _ = storage
    name = f"shared-{uuid.uuid4().hex[:8]}"
    log_dir = tmp_path / "trials"
    log_dir.mkdir()
    common = [f"hydra.sweeper.study_name={name}", "hydra.sweeper.n_trials=6"]
    procs = [
        _start(url, tmp_path, log_dir, *common),
        _start(url, tmp_path, log_dir, *common, "hydra.sweeper.n_jobs=2"),
    ]
    ended = [_finish(p) for p in procs]
    for code, out in ended:
        assert code == 0, out[-3000:]

    study = optuna.load_study(study_name=name, storage=url)
    done = [t for t in study.trials if counts(t)]
    assert len(done) == 6 and all(t.state.name == "COMPLETE" for t in done)  # n_trials is the total
    others = [t for t in study.trials if not counts(t)]  # asked in the same instant as the last: given back
    assert all(t.state.name == "FAIL" and UNUSED_ATTR in t.user_attrs for t in others), others
    records = _records(log_dir)
    numbers = [r["number"] for r in records]
    assert sorted(numbers) == sorted(t.number for t in done)  # every trial ran once, none twice
    assert len({tuple(r["params"]) for r in records}) == 6  # no params twice (seeded per process)
    pids = {r["pid"] for r in records}
    assert pids == {p.pid for p in procs}  # both processes took part
    for trial in done:
        (record,) = [r for r in records if r["number"] == trial.number]
        assert trial.user_attrs[OWNER_ATTR].endswith(f":{record['pid']}")
        overrides = yaml.safe_load(
            (tmp_path / name / str(trial.number) / ".hydra" / "overrides.yaml").read_text()
        )
        assert f"number:{trial.number}}}" in next(o for o in overrides if o.startswith("optuna_trial="))
    results = yaml.safe_load((tmp_path / name / "optimization_results.yaml").read_text())
    assert results["complete"] == 6 and results["storage"] == redact(url)  # no password in files

    # The same command with another fixed config: refused, nothing added.
    monkeypatch.setenv("ITUNE_TEST_TRIAL_LOG", str(log_dir))
    monkeypatch.setenv("ITUNE_TEST_ALONE", "1")
    with pytest.raises(StudyConfigError, match=r"trainer.max_steps: \d+ → 7"):
        multirun(url, tmp_path, *common, "trainer.max_steps=7")
    assert len(optuna.load_study(study_name=name, storage=url).trials) == len(study.trials)

    # A process killed on this host left trial RUNNING: a resume to 8 replaces it and adds 2.
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = study.ask()
    left.set_user_attr(OWNER_ATTR, f"{socket.gethostname()}:{dead.pid}")
    multirun(url, tmp_path, f"hydra.sweeper.study_name={name}", "hydra.sweeper.n_trials=8")
    study = optuna.load_study(study_name=name, storage=url)
    assert sum(counts(t) for t in study.trials) == 8
    stale = study.trials[left.number]
    assert stale.state.name == "FAIL" and "stopped" in stale.user_attrs[INTERRUPTED_ATTR]
    assert len(_records(log_dir)) == 8
    assert not any(t.state.name == "RUNNING" or FAILED_ATTR in t.user_attrs for t in study.trials)


def test_processes_starting_one_study_with_other_configs(storage, tmp_path):
    """Two processes create one (pinned) study at once with different fixed configs: one is refused."""
    url, _ = storage
    name = f"clash-{uuid.uuid4().hex[:8]}"
    log_dir = tmp_path / "trials"
    log_dir.mkdir()
    common = [f"hydra.sweeper.study_name={name}", "hydra.sweeper.n_trials=2"]
    procs = {
        steps: _start(url, tmp_path, log_dir, *common, f"trainer.max_steps={steps}", alone=True)
        for steps in (5, 7)
    }
    ended = {steps: _finish(proc) for steps, proc in procs.items()}
    codes = sorted(code for code, _ in ended.values())
    assert codes == [0, 3], {steps: out[-2000:] for steps, (_, out) in ended.items()}  # one ran, one refused
    (ran,) = [steps for steps, (code, _) in ended.items() if code == 0]
    (refused,) = [out for code, out in ended.values() if code == 3]
    assert f"another fixed config (trainer.max_steps: {ran} → {12 - ran})" in refused
    study = optuna.load_study(study_name=name, storage=url)
    assert len(study.trials) == 2 and all(counts(t) for t in study.trials)
    assert {r["pid"] for r in _records(log_dir)} == {procs[ran].pid}


@pytest.mark.slow
def test_two_itune_train_processes_share_a_study_of_tiny_runs(storage, tmp_path):
    """`itune-train -m hparams_search=forgetting_optuna` twice at once on one study: 3 tiny trials in all."""
    from tests.test_sweep import TINY

    url, _ = storage
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    args = [
        "-m",
        *TINY,
        "hparams_search=forgetting_optuna",
        f"eval.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweeper.storage={url}",
        f"hydra.sweeper.study_name={name}",
        f"hydra.sweep.dir={tmp_path / 'study'}",
        "hydra.sweeper.sampler.n_startup_trials=1",
        "hydra.sweeper.n_trials=3",
    ]
    exe = str(Path(sys.executable).with_name("itune-train"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [exe, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-4000:]
    study = optuna.load_study(study_name=name, storage=url)
    done = [t for t in study.trials if counts(t)]
    assert len(done) == 3 and all(t.state.name == "COMPLETE" for t in done)
    owners = {t.user_attrs[OWNER_ATTR].rpartition(":")[2] for t in done}
    assert owners == {str(p.pid) for p in procs}  # both ran trials
    assert len({tuple(sorted(t.params.items())) for t in done}) == 3
    for trial in done:
        job = tmp_path / "study" / str(trial.number)
        status = json.loads((job / "status.json").read_text())
        assert status["status"] == "completed" and status["objective"] == pytest.approx(trial.value)
        assert (job / "metrics.json").is_file()
    jobs = {p.name for p in (tmp_path / "study").iterdir() if p.name.isdigit()}
    assert jobs == {str(t.number) for t in done}  # no job for a given-back trial, none run twice
