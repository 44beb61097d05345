"""Regularizers of the training loss against forgetting (the options of the `regularizer` config group),
and the base model a KL to the base is taken against (`kl_base`: `resolve_kl_base`, `frozen_base`).

The module adds one weighted term to the cross-entropy of every training step:

    train/loss = train/ce + weight * train/<name>

and logs the unweighted value as `train/<name>` (`train/kl_base`, `train/l2_init`), so runs with
different weights stay comparable. Each works with any `peft` option and any data mix.

- `KLToBase` (`regularizer=kl_base`): the mean over the batch's trained (assistant) tokens of the
  forward KL(base ‖ tuned) of the next-token distributions: the same quantity as the validation metric
  `val/<source>/kl_base`, here on the training batch and with its gradient (the base side is constant).
  The base is the model with its LoRA adapter disabled (one more no-grad forward per step, no second
  copy), a frozen copy of the model for full fine-tuning or for adapters whose init changes the base
  weights (PiSSA, OLoRA, CorDA: twice the model's memory); see `resolve_kl_base`. Forward
  KL (base ‖ tuned) is mass-covering: it penalises the tuned model for dropping tokens the base found
  likely, which is what forgetting looks like. LLaMA-Factory's `use_asft_loss` uses alpha ≈ 0.05.
- `L2ToInit` (`regularizer=l2_init`, L2-SP): weight * Σ ‖θ − θ₀‖² over the trainable parameters, θ₀
  their values when training starts. For LoRA that is ‖A − A₀‖² + ‖B‖² summed over the adapter (B₀ = 0),
  not ‖scale·B·A‖² of the weight delta: simpler, and it still pulls the delta to 0. For full fine-tuning θ₀
  is a copy of every weight (twice the model's memory).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

KL_BASE_MODES = ("auto", "off", "adapter", "frozen_copy")  # values of `kl_base` (also true/false)


class Regularizer(nn.Module):
    """A term added to the training loss: `weight * value`; `value` is logged as `train/<name>`.

    Subclasses set `name` and `needs_base` (the module then keeps a base-model reference and passes
    the training batch's KL to it) and implement `forward`. A regularizer is a submodule of the
    LightningModule: its buffers follow the model's device and, non-persistent, stay out of checkpoints.

    Args:
        weight: the term's factor in the loss; 0 leaves loss and gradients exactly those of plain SFT.
    """

    name = ""
    needs_base = False

    def __init__(self, weight: float) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"regularizer.weight={weight} must be >= 0")
        self.weight = float(weight)

    def setup(self, model: nn.Module) -> None:
        """Called once with the model before training (after peft is applied)."""

    def forward(self, model: nn.Module, kl_to_base: torch.Tensor | None) -> torch.Tensor:
        """The unweighted value (a scalar with its gradient).

        Args:
            model: the model being trained.
            kl_to_base: the mean KL(base ‖ tuned) over the batch's trained tokens, with its gradient;
                computed (one more no-grad forward of the base) only for a regularizer with `needs_base`.
        """
        raise NotImplementedError


class KLToBase(Regularizer):
    """weight * mean KL(base ‖ tuned) over the training batch's trained tokens (see the module docstring).

    Args:
        weight: alpha; 0.05 (LLaMA-Factory's asft default) is a starting point to sweep from.
    """

    name = "kl_base"
    needs_base = True

    def __init__(self, weight: float = 0.05) -> None:
        super().__init__(weight)

    def forward(self, model: nn.Module, kl_to_base: torch.Tensor | None) -> torch.Tensor:
        if kl_to_base is None:
            raise ValueError("regularizer=kl_base: the module passed no KL (the logits were not computed)")
        return kl_to_base


class L2ToInit(Regularizer):
    """weight * Σ ‖θ − θ₀‖² over the trainable parameters (L2-SP); gradient 2·weight·(θ − θ₀).

    Args:
        weight: lambda. The term is a sum over parameters (not a mean), so its scale grows with the
            number of trainable weights; 0.01 is a starting point to sweep from.
    """

    name = "l2_init"

    def __init__(self, weight: float = 0.01) -> None:
        super().__init__(weight)
        self.names: list[str] = []

    def setup(self, model: nn.Module) -> None:
        """Copy the trainable parameters' current values as θ₀ (non-persistent buffers)."""
        self.names = []
        for name, param in model.named_parameters():
            if param.requires_grad:
                self.register_buffer(f"init_{len(self.names)}", param.detach().clone(), persistent=False)
                self.names.append(name)
        if not self.names:
            raise ValueError("regularizer=l2_init: the model has no trainable parameters")

    def forward(self, model: nn.Module, kl_to_base: torch.Tensor | None) -> torch.Tensor:
        params = dict(model.named_parameters())
        terms = [
            (params[name].float() - getattr(self, f"init_{i}").float()).pow(2).sum()
            for i, name in enumerate(self.names)
        ]
        return torch.stack(terms).sum()


# ----------------------------------------------------------------------------- the base model of a KL
def resolve_kl_base(kl_base: bool | str, peft: bool, base_changed: str | None = None) -> str:
    """The reference model of `val/<source>/kl_base`: "off", "adapter" or "frozen_copy".

    `auto` (the default) is `adapter` under peft (free: the same weights with the adapter disabled) and
    `off` for full fine-tuning, where the frozen copy doubles the model's memory; `true` is the cheapest
    available reference (`adapter` under peft, else `frozen_copy`), `false` is `off`. When the adapter's
    init changed the base weights (`base_changed`: PiSSA, OLoRA, CorDA) the adapter disabled is not the
    base: `auto` is then `off`, `true` is `frozen_copy` and `adapter` is refused.

    Raises:
        ValueError: for an unknown setting, or `adapter` without a peft adapter or with a base-changing init.
    """
    adapter = "adapter" if peft and not base_changed else "frozen_copy"
    if isinstance(kl_base, bool):
        return adapter if kl_base else "off"
    mode = str(kl_base).lower()
    if mode not in KL_BASE_MODES:
        raise ValueError(f"kl_base={kl_base!r} is not one of {list(KL_BASE_MODES)} (or true/false)")
    if mode == "auto":
        return "adapter" if adapter == "adapter" else "off"
    if mode == "adapter" and peft and base_changed:
        raise ValueError(
            f"kl_base=adapter: peft.init_lora_weights={base_changed} changes the base weights, so the model "
            "with its adapter disabled is not the base; use kl_base=frozen_copy (2x memory) or kl_base=off"
        )
    if mode == "adapter" and not peft:
        raise ValueError(
            "kl_base=adapter needs a peft adapter (peft=lora); for full fine-tuning use kl_base=frozen_copy "
            "(a frozen copy of the base: twice the model's memory) or kl_base=off"
        )
    return mode


def frozen_base(model: nn.Module, merge: bool = False) -> nn.Module:
    """A frozen copy of `model`'s base weights (a peft adapter removed), in eval mode, without grad.

    `merge`: merge the adapter in instead of removing it; taken before training from an adapter whose init
    changed the base weights (PiSSA, OLoRA, CorDA: W = W_res + B0·A0), that is the original model.
    """
    base = copy.deepcopy(model)
    if hasattr(base, "peft_config"):  # removed: the base without the adapter layers; or merged
        base = base.merge_and_unload() if merge else base.unload()
    base.eval()
    base.requires_grad_(False)
    return base
