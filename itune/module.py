"""The LightningModule: masked causal-LM loss, optimizer and scheduler from their config groups."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from itune.data.templates import IGNORE_INDEX


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy of next-token prediction, 0 where the (shifted) label is IGNORE_INDEX."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(shift_labels)


class InstructionTuner(L.LightningModule):
    """Fine-tunes a causal LM on batches of input_ids/labels/attention_mask.

    The loss is the mean over trained tokens (labels != IGNORE_INDEX) of the batch. Validation reports
    `val/loss` over all held-out tokens and `val/<source>/loss` per data source.

    Args:
        model: a transformers causal LM, possibly wrapped by peft.
        optimizer: partial optimizer factory (`torch.optim.AdamW` with `_partial_: true`).
        scheduler: partial LR-schedule factory taking the optimizer (and `num_training_steps` if it
            accepts it); stepped every optimizer step. None keeps the LR constant.
        source_names: names of the validation sources, by index of the batch's `source` field.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        source_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.source_names = list(source_names or [])
        self.peft = hasattr(model, "peft_config")
        self.strict_loading = not self.peft  # adapter-only checkpoints hold the trainable weights only
        n = max(1, len(self.source_names))
        self.register_buffer("val_loss_sum", torch.zeros(n, dtype=torch.float64), persistent=False)
        self.register_buffer("val_tokens", torch.zeros(n, dtype=torch.float64), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = token_losses(self(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        trained = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        loss = losses.sum() / trained.clamp(min=1)
        bs = batch["input_ids"].size(0)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/trained_tokens", trained.float(), reduce_fx="sum", batch_size=bs)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], prog_bar=True, batch_size=bs)
        return loss

    def on_validation_epoch_start(self) -> None:
        self.val_loss_sum.zero_()
        self.val_tokens.zero_()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        losses = token_losses(self(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1)
        source = batch.get("source", torch.zeros_like(tokens))
        self.val_loss_sum.index_add_(0, source, losses.sum(dim=1).double())
        self.val_tokens.index_add_(0, source, tokens.double())

    def on_validation_epoch_end(self) -> None:
        sums, tokens = self.all_gather(self.val_loss_sum), self.all_gather(self.val_tokens)
        if sums.dim() > 1:  # several processes
            sums, tokens = sums.sum(0), tokens.sum(0)
        if tokens.sum() == 0:
            return
        self.log("val/loss", (sums.sum() / tokens.sum()).float(), prog_bar=True, rank_zero_only=True)
        for i, name in enumerate(self.source_names):
            if tokens[i] > 0:
                self.log(f"val/{name}/loss", (sums[i] / tokens[i]).float(), rank_zero_only=True)

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        kwargs = {}
        if "num_training_steps" in inspect.signature(self.scheduler_factory).parameters:
            kwargs["num_training_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, **kwargs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """With peft, keep only trainable (adapter) weights: checkpoints stay small."""
        if self.peft:
            trainable = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
