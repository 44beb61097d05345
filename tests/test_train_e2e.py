"""End to end on CPU with the tiny model: the loss falls, LoRA trains and the base does not, the run dir."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from itune.demo_model import demo_model_dir
from itune.model import tiny_llama
from itune.train import train

pytestmark = pytest.mark.slow
TINY = ["model=tiny", "template=chatml", "logger=csv", "eval=none"]


def data_overrides(path: Path) -> list[str]:
    return ["data=alpaca", f"data.sources.alpaca.path={path}", "data.val_fraction=0.25", "data.batch_size=4"]


def train_losses(run_dir: Path) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_lora_run(compose_train, alpaca_file):
    cfg = compose_train(
        *TINY,
        *data_overrides(alpaca_file),
        "peft=lora",
        "optimizer.lr=1e-2",
        "trainer.max_steps=30",
        "scheduler=constant",
        "scheduler.num_warmup_steps=0",
        "peft.lora_dropout=0",
    )
    metrics, objects = train(cfg)
    run_dir = Path(cfg.run_dir)

    losses = train_losses(run_dir)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses  # a tiny random model learns slowly
    assert metrics["train/steps"] == 30 and metrics["val/loss"] > 0 and "val/alpaca/loss" in metrics

    peft_model = objects["module"].model
    base = tiny_llama()  # same seed → the weights the run started from
    for name, param in base.named_parameters():
        key = name.replace(".weight", ".base_layer.weight") if "proj" in name else name
        tuned = peft_model.get_parameter(f"base_model.model.{key}")
        assert torch.equal(tuned, param), f"base weight {name} changed"
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero

    for name in (
        "config.yaml",
        "template.json",
        "metrics.json",
        "adapter/adapter_model.safetensors",
        "adapter/tokenizer.json",
        "checkpoints/last.ckpt",
        "csv/metrics.csv",
    ):
        assert (run_dir / name).exists(), name
    saved = json.loads((run_dir / "template.json").read_text())
    assert saved["fingerprint"] == objects["template"].fingerprint and saved["name"] == "chatml"
    assert json.loads((run_dir / "metrics.json").read_text())["train/steps"] == 30
    ckpt = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])  # adapter-only checkpoint


def test_full_finetune_run(compose_train, alpaca_file):
    cfg = compose_train(*TINY, *data_overrides(alpaca_file), "peft=none", "trainer.max_steps=3")
    metrics, objects = train(cfg)
    tuned = objects["module"].model
    base = tiny_llama()
    changed = [n for n, p in base.named_parameters() if not torch.equal(p, tuned.get_parameter(n))]
    assert len(changed) == len(list(base.parameters()))
    assert (Path(cfg.run_dir) / "model" / "model.safetensors").exists()


def test_itune_train_from_another_directory(tmp_path, alpaca_file):
    """The installed command finds its packaged configs from any directory."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    cmd = [
        str(Path(sys.executable).with_name("itune-train")),
        *TINY,
        "trainer=debug",
        "data=alpaca",
        f"data.sources.alpaca.path={alpaca_file}",
    ]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((cwd / "outputs").glob("*/*/metrics.json"))
    assert len(runs) == 1
    assert json.loads(runs[0].read_text())["train/steps"] == 3


def test_missing_data_path_is_a_clear_error(tmp_path):
    cmd = [str(Path(sys.executable).with_name("itune-train")), *TINY, "trainer=debug", "data=flan"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "data.sources.flan.path" in done.stderr


@pytest.mark.integration
def test_demo_model_trains_a_few_steps(compose_train):
    try:
        demo_model_dir(fetch=False)
    except FileNotFoundError:
        pytest.skip("demo model not cached (make demo-model)")
    cfg = compose_train(
        "experiment=demo",
        "eval=none",
        "trainer.max_steps=3",
        "trainer.limit_val_batches=1",
        "data.num_samples=16",
        "data.batch_size=2",
        "data.max_val_samples=2",
        "save_model=false",
    )
    metrics, _ = train(cfg)
    assert metrics["train/steps"] == 3 and 0 < metrics["val/loss"] < 10
    assert os.path.exists(Path(cfg.run_dir) / "template.json")
