"""LoRA dropout fused into lora_A: the same numbers as peft's `lora_B(lora_A(dropout(x)))`, less memory.

Stock peft keeps, for every adapted linear, its own dropped copy of the input and the dropout noise until
backward (q, k and v each keep one of the same input): 8 bytes an element on CPU (fp32 copy + fp32 noise).
The fused layer keeps `x` (shared by the adapters of one input) and:
- on CPU, the mask as bools (1 byte an element), drawn exactly as `F.dropout` draws it on CPU
  (`bernoulli_(1 - p)` then `div_(1 - p)`), so outputs, gradients and the RNG stream are stock's;
- on CUDA, only the RNG state before the draw: backward restores it and redraws the same mask with the
  same op (as torch.utils.checkpoint does; cheap there), then puts the RNG back.
Backward recomputes the dropped input and the adapter's small matmul under autograd, so the gradients are
those of stock autograd bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

# devices whose generator state the fused path saves and restores; others run stock dropout + linear
RNG_DEVICES = ("cpu", "cuda")


def _rng_state(device: torch.device) -> torch.Tensor:
    return torch.get_rng_state() if device.type == "cpu" else torch.cuda.get_rng_state(device)


def _set_rng_state(state: torch.Tensor, device: torch.device) -> None:
    if device.type == "cpu":
        torch.set_rng_state(state)
    else:
        torch.cuda.set_rng_state(state, device)


def _cpu_noise(x: torch.Tensor, p: float) -> torch.Tensor:
    """The dropout noise of `F.dropout(x, p, training=True)` on CPU (ATen's `_dropout_impl`): a Bernoulli
    keep mask scaled by 1 / (1 - p), drawn from the global generator exactly as it draws it."""
    return torch.empty_like(x).bernoulli_(1 - p).div_(1 - p)


class DropoutLinearFunction(torch.autograd.Function):
    """`F.linear(F.dropout(x, p, training=True), weight)` saving `x` and a bool mask (CPU) or the RNG state
    (CUDA), never the dropped copy. Backward recomputes the two ops under autograd, so gradients equal
    stock autograd's; the global RNG stream is left as stock leaves it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:  # type: ignore[override]
        ctx.p = p
        ctx.autocast = (  # recompute under the forward's autocast, as torch.utils.checkpoint does
            torch.is_autocast_enabled(x.device.type),
            torch.get_autocast_dtype(x.device.type),
        )
        if x.device.type == "cpu":
            noise = _cpu_noise(x, p)
            ctx.save_for_backward(x, weight, noise != 0)
            return F.linear(x * noise, weight)
        ctx.rng = _rng_state(x.device)
        ctx.save_for_backward(x, weight)
        return F.linear(F.dropout(x, p, training=True), weight)

    @staticmethod
    def _dropped(ctx, x: torch.Tensor, saved: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The forward's dropped input, again: from the bool mask (CPU) or the redrawn mask (CUDA)."""
        if saved:
            return x * saved[0].to(x.dtype).div_(1 - ctx.p)  # the forward's noise, bit for bit
        later = _rng_state(x.device)
        _set_rng_state(ctx.rng, x.device)
        try:
            return F.dropout(x, ctx.p, training=True)  # the forward's mask, redrawn
        finally:
            _set_rng_state(later, x.device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:  # type: ignore[override]
        x, weight, *mask = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        xd = x.detach().requires_grad_(need_x)
        wd = weight.detach().requires_grad_(need_w)
        enabled, dtype = ctx.autocast
        autocast = torch.autocast(x.device.type, dtype=dtype, enabled=enabled, cache_enabled=False)
        with torch.enable_grad(), autocast:
            y = F.linear(DropoutLinearFunction._dropped(ctx, xd, tuple(mask)), wd)
        inputs = [t for t, need in ((xd, need_x), (wd, need_w)) if need]
        grads = iter(torch.autograd.grad(y, inputs, grad_y))
        return (next(grads) if need_x else None), (next(grads) if need_w else None), None


class FusedDropoutLinear(nn.Linear):
    """A bias-free lora_A sharing the original layer's weight Parameter, with the adapter's dropout fused:
    training mode draws dropout inside `DropoutLinearFunction`; eval mode is the plain linear."""

    def __init__(self, linear: nn.Linear, p: float, training: bool = True) -> None:
        nn.Module.__init__(self)  # no new weight: the Parameter (and its state_dict key) stays the same
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.register_parameter("bias", None)
        self.p = p
        self.train(training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self.weight)
        if torch.compiler.is_compiling() or x.device.type not in RNG_DEVICES:
            return F.linear(F.dropout(x, self.p, training=True), self.weight)  # stock ops
        return DropoutLinearFunction.apply(x, self.weight, self.p)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.p}"


def fuse_lora_dropout(model: nn.Module) -> int:
    """Fuse each vanilla LoRA Linear adapter's dropout (0 < p < 1) into its lora_A, in place.

    lora_A becomes a `FusedDropoutLinear` on the same weight Parameter and lora_dropout an `nn.Identity`,
    so state_dict keys, saving, merging, adapter switching and optimizer parameters are unchanged. DoRA and
    other LoRA variants, embedding and conv LoRA, quantized layers and dropout 0 are left alone.

    Returns:
        the number of adapters fused.
    """
    fused = 0
    for module in model.modules():
        # only layers running peft's Linear.forward (`lora_B(lora_A(dropout(x)))`)
        if not isinstance(module, LoraLinear) or type(module).forward is not LoraLinear.forward:
            continue
        for name, lora_a in module.lora_A.items():
            dropout = module.lora_dropout[name]
            if (
                type(dropout) is not nn.Dropout
                or dropout.inplace
                or not 0 < dropout.p < 1
                or module.use_dora.get(name, False)
                or name in module.lora_variant
                or type(lora_a) is not nn.Linear
                or lora_a.bias is not None
            ):
                continue
            module.lora_A[name] = FusedDropoutLinear(lora_a, dropout.p, training=dropout.training)
            module.lora_dropout[name] = nn.Identity()
            fused += 1
    return fused
