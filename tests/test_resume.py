"""Crash and resume: a training process killed with SIGKILL, resumed with ckpt_path=last, ends where an
uninterrupted run ends (same adapter weights and losses), from small adapter-only checkpoints."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_train_e2e import data_overrides

pytestmark = pytest.mark.slow
STEPS = 15  # 18 training rows / batch 4 → 5 batches an epoch: the run spans 3 epochs


def overrides(alpaca_file: Path) -> list[str]:
    return [
        "model=tiny",
        "template=chatml",
        "logger=csv",
        "eval=none",
        *data_overrides(alpaca_file),
        f"trainer.max_steps={STEPS}",
        "callbacks.checkpoint.every_n_train_steps=3",
        "peft.lora_dropout=0.2",  # dropout draws random numbers: the RNG state must be restored too
        "optimizer.lr=1e-2",
    ]


def command(run_dir: Path, alpaca_file: Path, *extra: str) -> list[str]:
    return [str(Path(sys.executable).with_name("itune-train")), f"hydra.run.dir={run_dir}"] + [
        *overrides(alpaca_file),
        *extra,
    ]


def ckpt_step(path: Path) -> int:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")["global_step"]
    except Exception:  # not there yet, or being written
        return -1


def losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path, alpaca_file):
    reference = tmp_path / "reference"
    done = subprocess.run(command(reference, alpaca_file), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    crashed = tmp_path / "crashed"
    last = crashed / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(command(crashed, alpaca_file), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while ckpt_step(last) < 6 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = ckpt_step(last)
    assert 6 <= killed_at < STEPS, f"the kill came too late (checkpoint at step {killed_at})"
    assert not (crashed / "metrics.json").exists()  # it really did not finish
    ckpt = torch.load(last, weights_only=True, map_location="cpu")  # plain tensors: no unpickling of code
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])  # adapter only
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"] and "ResumeState" in str(ckpt["callbacks"])
    assert last.stat().st_size < 2_000_000

    resumed = subprocess.run(
        command(crashed, alpaca_file, "ckpt_path=last"), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref_metrics = json.loads((reference / "metrics.json").read_text())
    res_metrics = json.loads((crashed / "metrics.json").read_text())
    assert res_metrics["train/steps"] == ref_metrics["train/steps"] == STEPS

    ref_w = load_file(reference / "adapter" / "adapter_model.safetensors")
    res_w = load_file(crashed / "adapter" / "adapter_model.safetensors")
    assert ref_w.keys() == res_w.keys()
    for k in ref_w:
        torch.testing.assert_close(res_w[k], ref_w[k], rtol=1e-5, atol=1e-6, msg=k)
    ref_losses, res_losses = losses(reference), losses(crashed)
    after = [s for s in ref_losses if s > killed_at]
    assert after and all(abs(ref_losses[s] - res_losses[s]) < 1e-5 for s in after), (ref_losses, res_losses)
    assert abs(res_metrics["val/loss"] - ref_metrics["val/loss"]) < 1e-5


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, alpaca_file):
    done = subprocess.run(
        command(tmp_path / "fresh", alpaca_file, "ckpt_path=last"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "no checkpoint at" in done.stderr and "hydra.run.dir" in done.stderr


def test_ctrl_c_saves_a_checkpoint_and_resume_continues_the_run(tmp_path, alpaca_file):
    """Ctrl-C: status `interrupted`, a checkpoint at the step it stopped, and `resume=<dir>` with no
    overrides retyped ends with the same weights and one unbroken CSV history as an uninterrupted run."""
    reference = tmp_path / "reference"
    done = subprocess.run(command(reference, alpaca_file), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "interrupted"
    proc = subprocess.Popen(command(run, alpaca_file), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while ckpt_step(run / "checkpoints" / "last.ckpt") < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGINT, err.decode()[-3000:]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and "resume=" in status["resume"], status
    stopped_at = ckpt_step(run / "checkpoints" / "last.ckpt")
    assert 3 <= stopped_at < STEPS, stopped_at
    assert not (run / "metrics.json").exists()

    itune = str(Path(sys.executable).with_name("itune-train"))
    refused = subprocess.run([itune, f"resume={run}", "optimizer.lr=1"], capture_output=True, text=True)
    assert refused.returncode == 2 and "resume_allow_changes=true" in refused.stderr, refused.stderr
    resumed = subprocess.run([itune, f"resume={run}"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr  # Lightning's warning does not apply to our loader
    assert json.loads((run / "status.json").read_text())["status"] == "completed"

    ref_losses, res_losses = losses(reference), losses(run)
    assert sorted(res_losses) == sorted(ref_losses), stopped_at  # steps before the stop kept, none twice
    assert all(abs(ref_losses[s] - res_losses[s]) < 1e-5 for s in ref_losses), (ref_losses, res_losses)
    ref_w = load_file(reference / "adapter" / "adapter_model.safetensors")
    res_w = load_file(run / "adapter" / "adapter_model.safetensors")
    for k in ref_w:
        torch.testing.assert_close(res_w[k], ref_w[k], rtol=1e-5, atol=1e-6, msg=k)


def test_resume_refuses_a_changed_mixture(tmp_path, alpaca_file):
    run = tmp_path / "run"
    first = subprocess.run(
        command(run, alpaca_file, "trainer.max_steps=3"), capture_output=True, text=True, timeout=600
    )
    assert first.returncode == 0, first.stderr[-3000:]
    changed = subprocess.run(
        command(run, alpaca_file, "trainer.max_steps=6", "ckpt_path=last", "data.val_fraction=0.5"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert changed.returncode != 0 and "changed data mixture" in changed.stderr, changed.stderr[-2000:]
