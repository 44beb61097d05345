"""Shared fixtures: Hydra composition of the packaged configs, the byte-level tokenizer, tiny data files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

import itune  # noqa: F401  (registers config resolvers)
from itune.model import byte_level_tokenizer

CONF = Path(__file__).resolve().parents[1] / "conf"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def rank_zero():
    """Every test starts as rank 0: a test that builds a Lightning strategy for another rank in this
    process (a simulated DDP or Slurm rank) sets Lightning's global `rank_zero_only.rank`, which would
    silence the loggers and rank-0 writes of every later test."""
    from lightning.pytorch.utilities import rank_zero_only

    yield
    rank_zero_only.rank = 0


@pytest.fixture(scope="session")
def tokenizer():
    return byte_level_tokenizer()


@pytest.fixture
def compose_train(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose conf/train.yaml with overrides, the run directory in tmp_path."""

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_module(config_module="itune.conf", version_base="1.3"):
            return compose("train", overrides=[f"run_dir={tmp_path / 'run'}", *overrides])

    return _compose


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def alpaca_file(tmp_path: Path) -> Path:
    """A small Alpaca-format JSON file: 24 rows of 6 distinct patterns."""
    rows = [
        {"instruction": f"Repeat the word {w}.", "input": "", "output": f"{w} {w}"}
        for w in ["red", "blue", "green", "gold", "pink", "gray"]
    ] * 4
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def hydra_multirun(
    task: Callable[[DictConfig], object],
    *overrides: str,
    config_name: str = "train",
    task_name: str = "itune_train",
) -> object:
    """`itune-train -m …` in this process: Hydra's multirun of the packaged configs, each job `task(cfg)`
    (a stand-in for training unless `task` trains); returns the sweeper's result (an Optuna study's
    results). The sweep summary callback is left out (its config check imports the training stack) and
    jobs keep the test's logging.
    """
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    from itune.sweep.optuna import register_plugin

    register_plugin()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    app = Hydra.create_main_hydra2(
        task_name=task_name, config_search_path=create_config_search_path("pkg://itune.conf")
    )
    args = ["~hydra.callbacks.sweep_summary", "hydra/job_logging=none", *overrides]
    try:
        return app.multirun(config_name, task, args, with_log_configuration=False)
    finally:
        GlobalHydra.instance().clear()


def optuna_sweep(
    task: Callable[[DictConfig], object],
    storage: str,
    sweep_root: Path,
    *overrides: str,
    preset: str = "forgetting_optuna",
) -> dict[str, object]:
    """`itune-train -m hparams_search=<preset> …` in this process (`hydra_multirun`): the study in
    `storage`, each trial's job in `sweep_root/<study name>/<trial>`; returns the study's results."""
    return hydra_multirun(
        task,
        f"hparams_search={preset}",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweep.dir={sweep_root}/" + "${hydra.sweeper.study_name}",
        *overrides,
    )
