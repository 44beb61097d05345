"""Regularizers of the training loss against forgetting: the options of the `regularizer` config group.

The module adds one weighted term to the cross-entropy of every training step:

    train/loss = train/ce + weight * train/<name>

and logs the unweighted value as `train/<name>` (`train/kl_base`, `train/l2_init`), so runs with
different weights stay comparable. Each works with any `peft` option and any data mix.

- `KLToBase` (`regularizer=kl_base`): the mean over the batch's trained (assistant) tokens of the
  forward KL(base ‖ tuned) of the next-token distributions: the same quantity as the validation metric
  `val/<source>/kl_base`, here on the training batch and with its gradient (the base side is constant).
  The base is the model with its LoRA adapter disabled (one more no-grad forward per step, no second
  copy), a frozen copy of the model for full fine-tuning or for adapters whose init changes the base
  weights (PiSSA, OLoRA, CorDA: twice the model's memory); see `itune.module.resolve_kl_base`. Forward
  KL (base ‖ tuned) is mass-covering: it penalises the tuned model for dropping tokens the base found
  likely, which is what forgetting looks like. LLaMA-Factory's `use_asft_loss` uses alpha ≈ 0.05.
- `L2ToInit` (`regularizer=l2_init`, L2-SP): weight * Σ ‖θ − θ₀‖² over the trainable parameters, θ₀
  their values when training starts. For LoRA that is ‖A − A₀‖² + ‖B‖² summed over the adapter (B₀ = 0),
  not ‖scale·B·A‖² of the weight delta: simpler, and it still pulls the delta to 0. For full fine-tuning θ₀
  is a copy of every weight (twice the model's memory).
"""

from __future__ import annotations

import torch
from torch import nn


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
