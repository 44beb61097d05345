"""WiSE-FT: a tuned model at θ_base + λ·(θ_tuned − θ_base), for evaluation (`interpolation`) and export
(`interpolate_model`). A plain LoRA adapter is scaled in place; anything else is merged and interpolated."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from peft import PeftType
from torch import nn

from itune.model import base_changing_init


def scalable_adapter(model: nn.Module) -> bool:
    """True for a peft LoRA model whose weight delta is linear in the layers' `scaling` (W + s·B·A): not
    DoRA (its magnitude vector is not a delta), not an init that changed the base weights."""
    configs = list(getattr(model, "peft_config", {}).values())
    return bool(configs) and all(
        c.peft_type == PeftType.LORA and not c.use_dora and not base_changing_init(c) for c in configs
    )


@contextmanager
def scaled_adapter(model: nn.Module, scale: float) -> Iterator[nn.Module]:
    """Inside the block every LoRA layer adds `scale` times its delta: W + scale·ΔW (restored after).

    At scale 0 the layers add exact zeros (the base model's outputs); at 1 nothing changes.
    """
    from peft.tuners.lora import LoraLayer

    saved = [(layer, dict(layer.scaling)) for layer in model.modules() if isinstance(layer, LoraLayer)]
    try:
        for layer, scaling in saved:
            layer.scaling.update({name: value * scale for name, value in scaling.items()})
        yield model
    finally:
        for layer, scaling in saved:
            layer.scaling.update(scaling)


@torch.no_grad()
def lerp_weights(
    model: nn.Module, start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], scale: float
) -> None:
    """Set every floating tensor of `model`'s state dict to `torch.lerp(start, end, scale)` in place
    (exactly `start` at 0 and `end` at 1)."""
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.is_floating_point() and name in start:
            tensor.data.copy_(torch.lerp(start[name].to(end[name]), end[name], scale))


def _weight_states(
    model: nn.Module, base: nn.Module
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(base, tuned) floating state dicts with the same keys and shapes, the tuned one copied."""
    tuned = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    start = base.state_dict()
    mismatched = [k for k, v in tuned.items() if k not in start or start[k].shape != v.shape]
    if mismatched:
        raise ValueError(f"cannot interpolate: the base model lacks or reshapes {mismatched[:3]}")
    return {k: start[k] for k in tuned}, tuned


def interpolation(
    model: nn.Module, base_model: Callable[[], nn.Module]
) -> tuple[nn.Module, Callable[[float], AbstractContextManager[nn.Module]]]:
    """WiSE-FT: a tuned model and `at(scale)`, a context in which the model's weights are
    θ_base + scale·(θ_tuned − θ_base).

    A LoRA adapter is scaled in place (`scaled_adapter`: no copy). Anything else (full fine-tuning, DoRA,
    an adapter of a base-changing init) is merged, and its weights set by `lerp_weights` from the base
    (`base_model()`, loaded once) and a copy of the tuned weights: three models' memory.

    Returns:
        (the model to evaluate, merged when needed; `at`).
    """
    if scalable_adapter(model):
        return model, functools.partial(scaled_adapter, model)
    if hasattr(model, "peft_config"):
        model = model.merge_and_unload()
    start, end = _weight_states(model, base_model())

    @contextmanager
    def at(scale: float) -> Iterator[nn.Module]:
        lerp_weights(model, start, end, scale)
        try:
            yield model
        finally:
            lerp_weights(model, start, end, 1.0)

    return model, at


@torch.no_grad()
def interpolate_model(
    model: nn.Module, scale: float, base_model: Callable[[], nn.Module], merge: bool
) -> nn.Module:
    """The model at θ_base + scale·(θ_tuned − θ_base) for good (export): a LoRA adapter keeps its format
    (lora_B times scale; merged after when `merge`); anything else is merged and interpolated.

    Raises:
        ValueError: an unmerged export of an adapter that cannot be scaled as an adapter (DoRA).
    """
    if scalable_adapter(model):
        from peft.tuners.lora import LoraLayer

        for layer in model.modules():
            if isinstance(layer, LoraLayer):
                for lora_b in layer.lora_B.values():
                    lora_b.weight.mul_(scale)
        return model.merge_and_unload() if merge else model
    if hasattr(model, "peft_config") and not merge:
        raise ValueError("scale with merge=false needs a plain LoRA adapter (not DoRA); set merge=true")
    if hasattr(model, "peft_config"):
        model = model.merge_and_unload()
    start, end = _weight_states(model, base_model())
    lerp_weights(model, start, end, scale)
    return model
