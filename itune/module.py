"""The LightningModule: masked causal-LM loss, optimizer and scheduler from their config groups."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from itune.data.templates import IGNORE_INDEX
from itune.losses import token_kl

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")  # batch keys every model gets
FLASH_VARLEN_INPUTS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")  # packed, flash only
KL_BASE_MODES = ("auto", "off", "adapter", "frozen_copy")  # values of `kl_base` (also true/false)


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


def uses_flash_attention(model: nn.Module) -> bool:
    """True when the model's attention is a flash-attention kernel (varlen inputs for packed rows)."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
    return "flash" in impl


def model_inputs(batch: dict[str, Any], flash: bool) -> dict[str, Any]:
    """The keys of a batch the model takes: ids, mask or packed position ids (+ varlen sizes on flash)."""
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    if flash and "position_ids" in batch and "cu_seq_lens_q" in batch:
        inputs |= {k: batch[k] for k in FLASH_VARLEN_INPUTS}
    return inputs


def resolve_kl_base(kl_base: bool | str, peft: bool) -> str:
    """The reference model of `val/<source>/kl_base`: "off", "adapter" or "frozen_copy".

    `auto` (the default) is `adapter` under peft (free: the same weights with the adapter disabled) and
    `off` for full fine-tuning, where the frozen copy doubles the model's memory; `true` is the cheapest
    available reference (`adapter` under peft, else `frozen_copy`), `false` is `off`.

    Raises:
        ValueError: for an unknown setting, or `adapter` without a peft adapter.
    """
    if isinstance(kl_base, bool):
        return ("adapter" if peft else "frozen_copy") if kl_base else "off"
    mode = str(kl_base).lower()
    if mode not in KL_BASE_MODES:
        raise ValueError(f"kl_base={kl_base!r} is not one of {list(KL_BASE_MODES)} (or true/false)")
    if mode == "auto":
        return "adapter" if peft else "off"
    if mode == "adapter" and not peft:
        raise ValueError(
            "kl_base=adapter needs a peft adapter (peft=lora); for full fine-tuning use kl_base=frozen_copy "
            "(a frozen copy of the base: twice the model's memory) or kl_base=off"
        )
    return mode


def frozen_base(model: nn.Module) -> nn.Module:
    """A frozen copy of `model`'s base weights (a peft adapter removed), in eval mode, without grad."""
    base = copy.deepcopy(model)
    if hasattr(base, "peft_config"):
        base = base.unload()  # the base model without the adapter layers (not merged)
    base.eval()
    base.requires_grad_(False)
    return base


@torch.no_grad()
def packed_isolation_error(model: nn.Module, lengths: tuple[int, int] = (5, 7)) -> float:
    """How much a packed example's logits change because of the example before it in the same row.

    Runs two random sequences alone and packed (position ids restarting, no attention mask, varlen sizes
    on flash attention) in eval mode and returns max |difference| / max |logit| of the second one: ~1e-6
    in fp32 when the model keeps attention inside each example, of order 1 when it does not.
    """
    was_training = model.training
    model.eval()
    try:
        vocab = model.get_input_embeddings().num_embeddings
        device = next(model.parameters()).device
        g = torch.Generator().manual_seed(0)
        a, b = (torch.randint(0, vocab, (1, n), generator=g).to(device) for n in lengths)
        alone = model(input_ids=b, use_cache=False).logits.float()
        pos = torch.cat([torch.arange(n) for n in lengths])[None].to(device)
        batch: dict[str, Any] = {"input_ids": torch.cat([a, b], 1), "position_ids": pos}
        cu = torch.tensor([0, lengths[0], sum(lengths)], dtype=torch.int32, device=device)
        batch |= {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths)}
        batch["max_length_k"] = max(lengths)
        packed = model(**model_inputs(batch, uses_flash_attention(model)), use_cache=False).logits.float()
        diff = (packed[:, lengths[0] :] - alone).abs().max() / alone.abs().max().clamp(min=1e-6)
        return float(diff)
    finally:
        model.train(was_training)


class InstructionTuner(L.LightningModule):
    """Fine-tunes a causal LM on batches of input_ids/labels/attention_mask.

    The loss is the mean over trained tokens (labels != IGNORE_INDEX) of the batch, padded or packed (a
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
            linear cross-entropy (same mean over trained tokens, far less memory for large vocabularies).
        kl_base: the base model of the validation KL (see `resolve_kl_base`): `auto` (the adapter
            disabled under peft, off for full fine-tuning), `adapter`, `frozen_copy` (a deep copy of the
            base taken here, before training; outside the state dict, so checkpoints do not grow) or
            `off`. Costs one more no-grad forward per validation batch. `adapter` assumes the adapter
            sits on unchanged base weights (LoRA's default init; not PiSSA/OLoRA/LoftQ, which change them).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        source_names: list[str] | None = None,
        fused_cross_entropy: bool = False,
        kl_base: bool | str = "auto",
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.source_names = list(source_names or [])
        self.fused_cross_entropy = fused_cross_entropy
        self.flash = uses_flash_attention(model)
        self.isolation_checked = False
        self.peft = hasattr(model, "peft_config")
        self.strict_loading = not self.peft  # adapter-only checkpoints hold the trainable weights only
        self.kl_base = resolve_kl_base(kl_base, self.peft)
        if self.kl_base == "frozen_copy":  # in __dict__, not a submodule: no state dict, no optimizer
            self.__dict__["base_copy"] = frozen_base(model)
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

    @torch.no_grad()
    def base_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits of the base model: the peft adapter disabled, or the frozen copy."""
        if self.kl_base == "adapter":
            with self.model.disable_adapter():
                return self(input_ids, attention_mask)
        out = self.base_copy(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
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

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if "position_ids" in batch and not self.isolation_checked:
            self.check_packing()
        inputs = model_inputs(batch, self.flash)
        trained = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        if self.fused_cross_entropy:  # the model's loss: mean over the shifted labels that are trained
            loss = self.model(**inputs, labels=batch["labels"], use_cache=False).loss
        else:
            losses = token_losses(self.model(**inputs, use_cache=False).logits, batch["labels"])
            loss = losses.sum() / trained.clamp(min=1)
        bs = batch["input_ids"].size(0)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/trained_tokens", trained.float(), reduce_fx="sum", batch_size=bs)
        if "num_real_tokens" in batch:  # real (not padding) tokens, and their share of the batch
            real = batch["num_real_tokens"].float()
            self.log("train/real_tokens", real, reduce_fx="sum", batch_size=bs)
            self.log("train/token_efficiency", real / batch["num_row_tokens"], batch_size=bs)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], prog_bar=True, batch_size=bs)
        return loss

    def on_validation_start(self) -> None:
        if self.kl_base == "frozen_copy":  # not a submodule, so Lightning does not move it
            self.base_copy.to(self.device)

    def on_validation_epoch_start(self) -> None:
        self.val_loss_sum.zero_()
        self.val_tokens.zero_()
        self.val_kl_sum.zero_()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["input_ids"], batch["attention_mask"])
        losses = token_losses(logits, batch["labels"])
        trained = batch["labels"][:, 1:] != IGNORE_INDEX
        tokens = trained.sum(dim=1)
        source = batch.get("source", torch.zeros_like(tokens))
        self.val_loss_sum.index_add_(0, source, losses.sum(dim=1).double())
        self.val_tokens.index_add_(0, source, tokens.double())
        if self.kl_base != "off":
            base = self.base_logits(batch["input_ids"], batch["attention_mask"])
            kl, _ = token_kl(base[:, :-1], logits[:, :-1], trained)
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
