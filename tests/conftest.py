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
