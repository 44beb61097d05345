"""The LightningModule: masked causal-LM loss, optimizer and scheduler from their config groups.

It wires the pieces that live elsewhere: the token losses (`itune.losses`), the per-step token-mean
scaling and logged sums (`itune.step_loss`), the batch's model inputs (`itune.model_inputs`) and the base
model a KL is taken against (`itune.regularizers`).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from itune.data.messages import IGNORE_INDEX
from itune.data.step_tokens import StepLayout
from itune.losses import (
    HeadSplit,
    chunked_token_losses,
    head_split_error,
    split_lm_head,
    token_kl,
    token_losses,
)
from itune.model import base_changing_init
from itune.model_inputs import accepts_loss_kwargs, model_inputs, packed_isolation_error, uses_flash_attention
from itune.regularizers import Regularizer, frozen_base, resolve_kl_base
from itune.step_loss import StepLoss, step_share

log = logging.getLogger(__name__)


class InstructionTuner(L.LightningModule):
    """Fine-tunes a causal LM on batches of input_ids/labels/attention_mask.

    The loss of an optimizer step is the mean over all its trained tokens (labels != IGNORE_INDEX): those
    of its gradient-accumulation micro-batches on every rank (`training_loss`), padded or packed (a
    packed batch carries `position_ids` that restart per example instead of an attention mask, and masks
    the first label of every example, so the trained tokens are the same). Validation reports
    `val/loss` over all held-out tokens and `val/<source>/loss` per data source, and (unless
    `kl_base` is off) `val/kl_base` and `val/<source>/kl_base`: the mean over the same tokens of
    KL(base ‖ tuned) of the next-token distributions, a forgetting signal that is 0 for the base itself.

    Args:
        model: a transformers causal LM, possibly wrapped by peft.
        optimizer: partial optimizer factory (`torch.optim.AdamW` with `_partial_: true`).
        scheduler: partial LR-schedule factory taking the optimizer (and `num_training_steps` if it
            accepts it); stepped every optimizer step. None keeps the LR constant.
        source_names: names of the validation sources, by index of the batch's `source` field.
        fused_cross_entropy: train with the model's own loss (`labels=` passed to the model) instead of
            materialising the logits; with `model.liger_kernel=true` that is liger-kernel's fused, chunked
            linear cross-entropy (same mean over trained tokens, far less memory for large vocabularies;
            it gets the step's token count as `num_items_in_batch`).
        kl_base: the base model of the validation KL (see `resolve_kl_base`): `auto` (the adapter
            disabled under peft, off for full fine-tuning), `adapter`, `frozen_copy` (a deep copy of the
            base taken here, before training; outside the state dict, so checkpoints do not grow) or
            `off`. Costs one more no-grad forward per validation batch. `adapter` needs the adapter on
            unchanged base weights: refused for PiSSA/OLoRA/CorDA inits, whose frozen copy is merged.
        regularizer: a term added to the training loss (`itune.regularizers`, the `regularizer` group);
            one that needs the base (`kl_base`) turns an `off` kl_base into the cheapest reference.
        chunked_loss: run the decoder body alone and compute the LM head and the cross-entropy over
            chunks of tokens (`itune.losses.chunked_token_losses`): the full (tokens x vocab) logits never
            exist, with the same loss and gradients. True: ~128 MB of float32 logits a chunk; an int:
            tokens a chunk; False: the model's full logits. Used where exact (a plain linear LM head, no
            logit soft-capping or scaling, not compiled; checked against the model's logits at the first
            batch, else the full logits, with a log line saying why) and not with `fused_cross_entropy`.
            It serves training and validation (`val/<source>/loss` and the KL to the base model, whose
            hidden states go through the head chunk by chunk too).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        source_names: list[str] | None = None,
        fused_cross_entropy: bool = False,
        kl_base: bool | str = "auto",
        chunked_loss: bool | int = True,
        regularizer: Regularizer | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.source_names = list(source_names or [])
        self.fused_cross_entropy = fused_cross_entropy
        self.loss_kwargs = fused_cross_entropy and accepts_loss_kwargs(model)
        self.flash = uses_flash_attention(model)
        self.step_loss = StepLoss()  # N_step and the logged parts of the optimizer step in progress
        if not isinstance(chunked_loss, bool) and not (isinstance(chunked_loss, int) and chunked_loss >= 1):
            raise ValueError(
                f"chunked_loss={chunked_loss!r}: expected true, false or tokens per chunk (>= 1)"
            )
        self.chunked_loss = bool(chunked_loss) and not fused_cross_entropy
        self.chunk_size = None if isinstance(chunked_loss, bool) else chunked_loss
        self.head_split: HeadSplit | str | None = None  # decided at the first batch (str: why not)
        self.isolation_checked = False
        self.peft = hasattr(model, "peft_config")
        self.strict_loading = not self.peft  # adapter-only checkpoints hold the trainable weights only
        changed = base_changing_init(model)
        self.kl_base = resolve_kl_base(kl_base, self.peft, changed)
        self.regularizer = regularizer  # a submodule: its buffers (L2's θ₀) follow the device, not saved
        if regularizer is not None:
            self.kl_base = self.setup_regularizer(regularizer, changed)
        if self.kl_base == "frozen_copy":  # in __dict__, not a submodule: no state dict, no optimizer
            self.__dict__["base_copy"] = frozen_base(model, merge=changed is not None)
        n = max(1, len(self.source_names))
        self.register_buffer("val_loss_sum", torch.zeros(n, dtype=torch.float64), persistent=False)
        self.register_buffer("val_tokens", torch.zeros(n, dtype=torch.float64), persistent=False)
        self.register_buffer("val_kl_sum", torch.zeros(n, dtype=torch.float64), persistent=False)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """Logits; `kwargs` are packed-batch inputs (`position_ids`, varlen sizes)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
        return out.logits

    def setup_regularizer(self, regularizer: Regularizer, base_changed: str | None) -> str:
        """Snapshot what the regularizer needs; returns the kl_base reference it leaves (never `off` when
        it needs the base: then the cheapest one, so `val/<source>/kl_base` is logged too)."""
        regularizer.setup(self.model)
        if regularizer.needs_base and self.fused_cross_entropy:
            raise ValueError(
                f"regularizer={regularizer.name} needs the logits, which model.liger_kernel=true never "
                "computes; set model.liger_kernel=false (the chunked loss keeps memory low)"
            )
        if not regularizer.needs_base or self.kl_base != "off":
            return self.kl_base
        mode = resolve_kl_base(True, self.peft, base_changed)
        log.info("regularizer=%s: base model = %s (kl_base=%s)", regularizer.name, mode, mode)
        return mode

    @torch.no_grad()
    def base_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """Logits of the base model: the peft adapter disabled, or the frozen copy (`kwargs` as `forward`)."""
        if self.kl_base == "adapter":
            with self.model.disable_adapter():
                return self(input_ids, attention_mask, **kwargs)
        out = self.base_copy(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
        return out.logits

    def check_packing(self) -> None:
        """Refuse packed batches once, at the first one, if the model lets packed examples see each other."""
        self.isolation_checked = True
        err = packed_isolation_error(self.model)
        if err > 5e-2:
            impl = getattr(getattr(self.model, "config", None), "_attn_implementation", None)
            raise RuntimeError(
                f"packed examples are not isolated by this model (attn_implementation={impl!r}): an "
                f"example's logits change by {err:.2g} (relative) when another example precedes it. Use "
                "model.lm.attn_implementation=sdpa (or flash_attention_2 on GPU), or set data.packing=false."
            )

    def split_head(self, input_ids: torch.Tensor) -> HeadSplit | None:
        """Decoder body and LM head for the chunked loss (None: full logits), decided at the first batch."""
        if self.head_split is None:
            split = split_lm_head(self.model) if self.chunked_loss else "chunked_loss=false"
            if isinstance(split, HeadSplit):
                err = head_split_error(self.model, split, input_ids[:1, :16])
                split = split if err < 1e-3 else f"head(decoder body) differs from the logits by {err:.2g}"
            if isinstance(split, str) and self.chunked_loss:
                log.info("chunked cross-entropy off (%s): computing the full logits", split)
            self.head_split = split
        return self.head_split if isinstance(self.head_split, HeadSplit) else None

    def step_layout(self) -> StepLayout:
        """Micro-batches a step, ranks and batches an epoch, from the trainer (1, 1, inf without one)."""
        trainer = self._trainer
        if trainer is None:
            return StepLayout()
        return StepLayout(
            accumulate=int(getattr(trainer, "accumulate_grad_batches", 1)),
            world_size=int(getattr(trainer, "world_size", 1)),
            batches=float(getattr(trainer, "num_training_batches", math.inf)),
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, parts = self.training_loss(batch, batch_idx, self.step_layout())
        self.log_train_step(parts, batch, batch_idx)
        return loss

    def training_loss(
        self, batch: dict[str, Any], batch_idx: int, layout: StepLayout
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to backpropagate for one micro-batch, and its parts for the log.

        The cross-entropy part is the sum of the micro-batch's token losses x k·W / N_step (k micro-batches
        a step, W ranks, N_step the trained tokens of the step's micro-batches on all ranks, from
        `itune.step_loss.StepLoss.step_tokens`): Lightning divides it by k and DDP averages the gradients
        over the W ranks, so a step's gradient is that of the mean over all its trained tokens, however
        they are split into micro-batches and ranks. A regularizer keeps its per-step semantics (see
        `regularized`).
        """
        if "position_ids" in batch and not self.isolation_checked:
            self.check_packing()
        inputs = model_inputs(batch, self.flash)
        trained = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        n_step = self.step_loss.step_tokens(batch, batch_idx, trained, layout).clamp(min=1)
        share = step_share(layout)
        kl = None  # per-row KL(base ‖ tuned), for a regularizer that needs it
        if self.fused_cross_entropy:  # the model's loss: sum over the trained shifted labels / items
            ce = self.model_loss(inputs, batch["labels"], trained, n_step / share)
        else:
            needs_kl = self.regularizer is not None and self.regularizer.needs_base
            losses, kl = self.losses_and_kl(inputs, batch["labels"], needs_kl)
            ce = losses.sum() * share / n_step
        loss, terms = self.regularized(ce, kl, trained)
        return loss, {"ce": ce.detach() / share, **terms}

    def model_loss(
        self, inputs: dict[str, Any], labels: torch.Tensor, trained: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor:
        """The model's own loss (liger's fused kernel when applied) as its token losses' sum / `items`.

        transformers' causal LMs (and liger's patched forwards) take `num_items_in_batch` and then divide
        the sum by it; a model whose forward does not gets its mean x the trained tokens / `items`.
        """
        if self.loss_kwargs:
            return self.model(**inputs, labels=labels, use_cache=False, num_items_in_batch=items).loss
        return self.model(**inputs, labels=labels, use_cache=False).loss * trained / items

    def regularized(
        self, ce: torch.Tensor, kl: torch.Tensor | None, trained: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The micro-batch's loss, `ce` + weight * the regularizer's value, and that value (unweighted, as
        `train/<name>`).

        The term keeps its per-step semantics: every micro-batch adds weight x its own value (the KL is the
        mean over this micro-batch's trained tokens), so after Lightning's division by k and DDP's average
        a step's term is the mean of its micro-batches' values over micro-batches and ranks, not a mean
        over the step's tokens as the cross-entropy is.
        """
        if self.regularizer is None:
            return ce, {}
        kl_mean = None if kl is None else kl.sum() / trained.clamp(min=1)
        value = self.regularizer(self.model, kl_mean)
        return ce + self.regularizer.weight * value, {f"train/{self.regularizer.name}": value}

    def log_due(self) -> bool:
        """Whether the loggers write this step (every `trainer.log_every_n_steps` steps, and the last)."""
        trainer = self._trainer
        if trainer is None:  # called outside a Trainer (tests)
            return True
        step = self.global_step + 1
        return (
            step % max(1, trainer.log_every_n_steps) == 0
            or step == trainer.max_steps
            or trainer.is_last_batch
        )

    def log_train_step(self, parts: dict[str, torch.Tensor], batch: dict[str, Any], batch_idx: int) -> None:
        """The step's `train/loss` (the mean over its trained tokens on all ranks, + the regularizer's
        weighted mean over its micro-batches), `train/ce`, `train/<name>`, token counts and `train/lr`.

        The micro-batches' parts add up on the device; at the step's last micro-batch, at the steps the
        loggers write only, they are summed over the ranks and copied to the host in one transfer: no
        `self.log` work and no host-device sync on the other micro-batches and steps.
        """
        if not self.step_loss.add_parts(parts, batch, batch_idx) or not self.log_due():
            return
        weight = self.regularizer.weight if self.regularizer is not None else 0.0
        distributed = self.step_layout().world_size > 1
        logged = self.step_loss.logged(list(parts)[1:], weight, distributed, "num_real_tokens" in batch)
        bs = batch["input_ids"].size(0)
        for key, value in logged.items():
            total = key.endswith("_tokens")
            self.log(
                key,
                torch.tensor(value, dtype=torch.float32),
                prog_bar=key == "train/loss",
                reduce_fx="sum" if total else "mean",
                batch_size=bs,
            )
        lr = torch.tensor(self.optimizers().param_groups[0]["lr"])  # on the host: no copy to the device
        self.log("train/lr", lr, prog_bar=True, batch_size=bs)

    def on_validation_start(self) -> None:
        if self.kl_base == "frozen_copy":  # not a submodule, so Lightning does not move it
            self.base_copy.to(self.device)

    def on_fit_start(self) -> None:
        # transformers' from_pretrained returns the model in eval mode and Lightning keeps the mode it
        # finds: without this, dropout (LoRA's included) would be off for the whole run
        self.model.train()

    def on_train_start(self) -> None:
        self.on_validation_start()  # a regularizer's frozen copy follows the model to its device

    def on_validation_epoch_start(self) -> None:
        self.val_loss_sum.zero_()
        self.val_tokens.zero_()
        self.val_kl_sum.zero_()

    def validation_losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token losses and per-row summed KL(base ‖ tuned) (None when `kl_base` is off) of a batch."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        return self.losses_and_kl(inputs, batch["labels"], self.kl_base != "off")

    def losses_and_kl(
        self, inputs: dict[str, Any], labels: torch.Tensor, kl: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token losses and per-row summed KL(base ‖ tuned) (None unless `kl`) of a batch's model
        inputs, chunked through the LM head where exact; both with the tuned side's gradient."""
        split = self.split_head(inputs["input_ids"])
        base = split_lm_head(self.base_copy) if split and self.kl_base == "frozen_copy" else split
        if split is None or not isinstance(base, HeadSplit):
            logits = self(**inputs)
            if not kl:
                return token_losses(logits, labels), None
            trained = labels[:, 1:] != IGNORE_INDEX
            base_logits = self.base_logits(**inputs)[:, :-1]
            return token_losses(logits, labels), token_kl(base_logits, logits[:, :-1], trained)[0]
        hidden = split.decoder(**inputs, use_cache=False)[0]
        base_hidden = None
        if kl and self.kl_base == "adapter":
            with self.model.disable_adapter(), torch.no_grad():
                base_hidden = split.decoder(**inputs, use_cache=False)[0]
        elif kl:
            with torch.no_grad():
                base_hidden = base.decoder(**inputs, use_cache=False)[0]
        head, base_head = split.head, base.head
        losses, kls = chunked_token_losses(
            hidden,
            labels,
            head.weight,
            head.bias,
            self.chunk_size,
            base_hidden,
            base_head.weight,
            base_head.bias,
        )
        return losses, None if kls is None else kls.sum(dim=1)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        losses, kl = self.validation_losses(batch)
        tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1)
        source = batch.get("source", torch.zeros_like(tokens))
        self.val_loss_sum.index_add_(0, source, losses.sum(dim=1).double())
        self.val_tokens.index_add_(0, source, tokens.double())
        if kl is not None:
            self.val_kl_sum.index_add_(0, source, kl.double())

    def on_validation_epoch_end(self) -> None:
        sums, tokens = self.all_gather(self.val_loss_sum), self.all_gather(self.val_tokens)
        kls = self.all_gather(self.val_kl_sum)
        if sums.dim() > 1:  # several processes
            sums, tokens, kls = sums.sum(0), tokens.sum(0), kls.sum(0)
        if tokens.sum() == 0:
            return
        self.log("val/loss", (sums.sum() / tokens.sum()).float(), prog_bar=True, rank_zero_only=True)
        if self.kl_base != "off":
            self.log("val/kl_base", (kls.sum() / tokens.sum()).float(), rank_zero_only=True)
        for i, name in enumerate(self.source_names):
            if tokens[i] > 0:
                self.log(f"val/{name}/loss", (sums[i] / tokens[i]).float(), rank_zero_only=True)
                if self.kl_base != "off":
                    self.log(f"val/{name}/kl_base", (kls[i] / tokens[i]).float(), rank_zero_only=True)

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
