"""Progress: log lines where no terminal is attached, a step-counting Rich bar on step-limited runs."""

from __future__ import annotations

import logging
import re

import lightning as L
import pytest
import torch

from itune import progress
from itune.progress import LogProgress, StepRichProgressBar, Ticker, batch_tokens, progress_bar


class Tiny(L.LightningModule):
    """A linear layer on random batches shaped like ours (input_ids + attention_mask)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.layer(batch["x"]).pow(2).mean()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n: int = 8) -> torch.utils.data.DataLoader:
    rows = [{"x": torch.randn(4), "attention_mask": torch.ones(5, dtype=torch.long)} for _ in range(n)]
    return torch.utils.data.DataLoader(rows, batch_size=2)


def fit(callback: L.Callback, tmp_path, **kwargs) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        **({"max_steps": 6, "max_epochs": -1} | kwargs),
    )
    trainer.fit(Tiny(), loader(), loader(4))
    return trainer


def test_log_progress_logs_steps_loss_tokens_and_eta(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="itune.progress")
    fit(LogProgress(every_n_steps=2, every_s=None), tmp_path, val_check_interval=3)
    lines = [r.getMessage() for r in caplog.records if r.name == "itune.progress"]
    train = [line for line in lines if line.startswith("train step")]
    assert [re.match(r"train step (\d+)/6", line).group(1) for line in train] == ["1", "2", "4", "6"]
    assert "train step 2/6 (33%) | loss " in train[1]
    assert all(" tok/s | elapsed " in line and " | ETA " in line for line in train)
    assert any(re.match(r"validation batch 1/2 \(50%\) \| elapsed .* \| ETA ", line) for line in lines)
    assert any(re.match(r"validation done: 2 batches in .* at step 3 \| val/loss ", line) for line in lines)
    assert lines[-1].startswith("train done: 6 steps in ")


def test_log_progress_by_seconds_only(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="itune.progress")
    fit(LogProgress(every_n_steps=None, every_s=3600), tmp_path, limit_val_batches=0)
    train = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train step")]
    assert [line.split(" (")[0] for line in train] == ["train step 1/6", "train step 6/6"]  # first and last


def test_ticker_is_due_every_n_or_after_seconds():
    now = [0.0]
    t = Ticker(every_n=5, every_s=10.0, clock=lambda: now[0])
    assert [n for n in range(1, 11) if t.due(n)] == [5, 10]
    now[0] = 10.5
    assert t.due(11) and not t.due(12)


def test_batch_tokens():
    assert batch_tokens({"attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])}) == 3
    assert batch_tokens({"num_real_tokens": torch.tensor([7, 2]), "attention_mask": torch.ones(2, 9)}) == 9
    assert batch_tokens([torch.ones(3)]) is None


def test_rich_bar_counts_steps_on_step_limited_runs(tmp_path):
    bar = StepRichProgressBar()
    trainer = fit(bar, tmp_path, limit_val_batches=0)
    assert trainer.max_epochs == -1
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert task.description.strip().endswith("Step 6/6") and "Epoch" not in task.description
    assert (task.completed, task.total) == (6, 6)
    assert bar._get_train_description(0).strip() == "Step 6/6"


def test_rich_bar_keeps_epochs_on_epoch_limited_runs(tmp_path):
    bar = StepRichProgressBar()
    fit(bar, tmp_path, max_steps=-1, max_epochs=2, limit_val_batches=0)
    assert bar._get_train_description(1).strip() == "Epoch 1/1"


def test_progress_bar_picks_rich_on_a_terminal_and_log_lines_elsewhere(monkeypatch):
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    assert isinstance(progress_bar(), StepRichProgressBar)
    assert isinstance(progress_bar(mode="log"), LogProgress)
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    assert isinstance(progress_bar(every_n_steps=5), LogProgress)
    assert isinstance(progress_bar(mode="rich"), StepRichProgressBar)
    with pytest.raises(ValueError, match="mode='bar'; valid: auto, rich, log"):
        progress_bar(mode="bar")
    with pytest.raises(ValueError, match="every_n_steps=0; valid: an integer >= 1 or null"):
        LogProgress(every_n_steps=0)


def test_docstring_examples():
    import doctest

    assert doctest.testmod(progress).failed == 0
