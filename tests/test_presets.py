"""The example team preset package (scripts/team_presets) adds options through Hydra's search path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from itune.config_schema import check_config
from itune.train import train

TEAM = Path(__file__).resolve().parents[1] / "scripts" / "team_presets"


@pytest.fixture
def team_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(TEAM))  # what `pip install scripts/team_presets` does


def compose_team(tmp_path: Path, searchpath: str, *overrides: str):
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        return compose(
            "train", overrides=[f"hydra.searchpath=[{searchpath}]", f"run_dir={tmp_path / 'run'}", *overrides]
        )


@pytest.mark.parametrize("searchpath", ["pkg://acme_presets", f"file://{TEAM / 'acme_presets'}"])
def test_team_presets_compose(searchpath, team_on_path, tmp_path):
    cfg = compose_team(tmp_path, searchpath, "experiment=acme_support")
    assert cfg.model.name == "acme/tiny-llama-1l" and cfg.model.lm.num_hidden_layers == 1
    assert cfg.model.lm.hidden_size == 64  # the rest comes from itune's model=tiny, which it extends
    assert cfg.optimizer.lr == 5.0e-3  # the team experiment overrides itune's default
    assert cfg.data.sources.domain.path.endswith("acme_presets/files/support.jsonl")
    assert Path(cfg.data.sources.domain.path).is_file()
    check_config(cfg)
    # itune's own options stay available next to the team's
    assert (
        compose_team(tmp_path, searchpath, "model=tiny", "data=acme_support").data.sources.general.weight
        == 0.2
    )


@pytest.mark.slow
def test_team_experiment_runs(team_on_path, tmp_path):
    cfg = compose_team(tmp_path, "pkg://acme_presets", "experiment=acme_support", "trainer.max_steps=2")
    metrics, _ = train(cfg)
    assert metrics["train/steps"] == 2 and "val/domain/loss" in metrics
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["train/steps"] == 2
