"""Loggers at once: TensorBoard/W&B offline files, MLflow params, metrics, lineage, artifacts; no secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from itune.runs.tracking import flatten
from itune.runs.write import is_secret_key, redact, redact_override
from itune.train import train
from tests.test_train_e2e import data_overrides

SECRET = "hf_sEcReT123"


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("hf_token", True),
        ("api_key", True),
        ("WANDB_API_KEY", True),
        ("db-password", True),
        ("client_secret", True),
        ("eos_token", False),
        ("pad_token", False),
        ("max_new_tokens", False),
        ("special_tokens", False),
        ("keyword", False),
    ],
)
def test_secret_keys(key, secret):
    assert is_secret_key(key) is secret


def test_redact_nested_and_overrides():
    tree = {"model": {"lm": {"token": SECRET, "name": "x"}}, "a": [{"api_key": SECRET}], "eos_token": "</s>"}
    assert SECRET not in json.dumps(redact(tree)) and redact(tree)["eos_token"] == "</s>"
    assert redact_override(f"+model.lm.hf_token={SECRET}") == "+model.lm.hf_token=***"
    assert redact_override("optimizer.lr=1e-3") == "optimizer.lr=1e-3"
    assert flatten({"a": {"b": 1, "c": []}}) == {"a.b": 1, "a.c": "[]"}


def test_two_loggers_compose(compose_train):
    cfg = compose_train("logger=[csv,tensorboard]")
    assert set(cfg.logger) == {"csv", "tensorboard"}
    cfg = compose_train("logger=[csv,tensorboard,mlflow,wandb]")
    assert set(cfg.logger) == {"csv", "tensorboard", "mlflow", "wandb"} and "register_model" in cfg.tracking
    assert cfg.logger.wandb.offline is True
    OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.slow
def test_all_loggers_in_one_run(compose_train, alpaca_file, tmp_path):
    db = tmp_path / "mlruns" / "mlflow.db"
    cfg = compose_train(
        "model=tiny",
        "template=chatml",
        "eval=none",
        *data_overrides(alpaca_file),
        "trainer.max_steps=4",
        "logger=[csv,tensorboard,mlflow,wandb]",
        f"logger.mlflow.tracking_uri=sqlite:///{db}",
        f"logger.mlflow.artifact_location={tmp_path / 'artifacts'}",
        "tracking.register_model=itune-tiny",
        f"+hf_token={SECRET}",
    )
    metrics, _ = train(cfg)
    run_dir = Path(cfg.run_dir)

    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    offline = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert offline, sorted(p.name for p in (run_dir / "wandb").iterdir())
    assert (run_dir / "csv" / "metrics.csv").exists()

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("itune")
    (run,) = client.search_runs([exp.experiment_id])
    params, tags = run.data.params, run.data.tags
    assert params["optimizer.lr"] == str(cfg.optimizer.lr) and params["peft.r"] == "8"
    assert params["hf_token"] == "***"
    assert {"train/loss", "val/loss", "train/steps"} <= set(run.data.metrics)
    template = json.loads((run_dir / "template.json").read_text())
    assert tags["itune.template_fingerprint"] == template["fingerprint"]
    assert tags["itune.base_model"] == "itune/tiny-llama" and tags["itune.version"]
    assert "itune.git_commit" in tags and tags["itune.run_dir"] == str(run_dir.resolve())
    if (run_dir / "manifest.json").exists():
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert tags["itune.data_manifest_hash"] == manifest["mixture_hash"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "template.json", "metrics.json", "adapter"} <= artifacts
    adapter = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert "adapter_model.safetensors" in adapter
    (version,) = client.search_model_versions("name='itune-tiny'")
    assert version.run_id == run.info.run_id and version.source.endswith("/adapter")

    for path in run_dir.rglob("*"):  # the secret is nowhere in the run directory
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert SECRET.encode() not in path.read_bytes(), path
    assert OmegaConf.load(run_dir / "config.yaml").hf_token == "***"
