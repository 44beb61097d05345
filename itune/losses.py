"""Token-level losses shared by the module and evaluation: the per-token cross-entropy, KL divergence to a
reference (base) model and the chunked cross-entropy of an LM head that never holds the full logits."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from itune.data.messages import IGNORE_INDEX
from itune.inference.eval_mode import eval_mode


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


def token_kl(
    base_logits: torch.Tensor, tuned_logits: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(base ‖ tuned) of the next-token distributions, summed over the masked positions of each row.

    Logits are (batch, positions, vocab) and `mask` is (batch, positions), aligned with them (for
    next-token prediction, the logits at position t and the label at t + 1: pass `logits[:, :-1]` and
    `labels[:, 1:] != IGNORE_INDEX`). Only the masked positions are computed, in float32. Divide the
    summed KL by the count for a token-weighted mean (as a metric over a validation set, or as a
    regularizer `kl.sum() / count.sum()`); identical logits give exactly 0.

    Example:
        >>> logits = torch.randn(2, 3, 5)
        >>> kl, count = token_kl(logits, logits, torch.tensor([[1, 1, 0], [0, 1, 1]]).bool())
        >>> kl.tolist(), count.tolist()
        ([0.0, 0.0], [2, 2])

    Returns:
        (summed KL per row, float32, shape (batch,); number of masked positions per row, shape (batch,)).
    """
    rows = mask.nonzero(as_tuple=True)[0]
    base = F.log_softmax(base_logits[mask].float(), dim=-1)
    tuned = F.log_softmax(tuned_logits[mask].float(), dim=-1)
    per_token = torch.linalg.vecdot(base.exp(), base - tuned)  # Σ_v p_base·(log p_base − log p_tuned)
    kl = torch.zeros(mask.size(0), dtype=per_token.dtype, device=per_token.device)
    return kl.index_add_(0, rows, per_token), mask.sum(dim=1)


# ----------------------------------------------------------------------------- chunked cross-entropy
LOGIT_BUDGET = 1 << 25  # fp32 logits per chunk by default: 32M elements (128 MB)
# config keys of models whose logits are not head(hidden): soft-capped, scaled (Gemma 2/3, Cohere, Granite…)
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")


class HeadSplit(NamedTuple):
    """A causal LM cut before its LM head: logits = head(decoder(**inputs)[0]) exactly."""

    decoder: nn.Module
    head: nn.Linear


def split_lm_head(model: nn.Module) -> HeadSplit | str:
    """The decoder body and plain linear LM head of a transformers causal LM (peft-wrapped or not).

    Returns the reason instead when the logits are more than a linear map of the last hidden states or the
    body cannot be called alone: an adapter or quantized layer on the head (not a plain `nn.Linear`),
    logit soft-capping or scaling in the config, a compiled model (its compiled forward would be bypassed),
    or a peft prompt-learning method (it prepends virtual tokens in the wrapper's forward).
    `head_split_error` checks the split on real inputs.
    """
    if getattr(model, "_compiled_call_impl", None) is not None:
        return "the model is compiled (model.compile=true)"
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return f"peft {peft_config.peft_type} adds virtual tokens in the wrapper's forward"
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_head, get_decoder = getattr(base, "get_output_embeddings", None), getattr(base, "get_decoder", None)
    head = get_head() if get_head else None
    if type(head) is not nn.Linear:
        return f"the LM head is a {type(head).__name__}, not a plain torch.nn.Linear"
    config = getattr(base, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in LOGIT_TRANSFORMS:
        value = getattr(text, key, None)
        if value not in (None, 1, 1.0):
            return f"the model transforms its logits ({key}={value})"
    try:
        decoder = get_decoder() if get_decoder else None
    except (AttributeError, ValueError, NotImplementedError) as e:
        return f"no decoder body ({type(e).__name__}: {e})"
    if decoder is None or decoder is base:
        return f"{type(base).__name__} has no separate decoder body"
    return HeadSplit(decoder, head)


@torch.no_grad()
def head_split_error(model: nn.Module, split: HeadSplit, input_ids: torch.Tensor) -> float:
    """max |logits of the model − head(decoder(...))| / max |logits| on `input_ids`, in eval mode: 0 (or
    ~1e-7) when the split is exact."""
    with eval_mode(model):
        logits = model(input_ids=input_ids, use_cache=False).logits.float()
        split_logits = split.head(split.decoder(input_ids=input_ids, use_cache=False)[0]).float()
        if split_logits.shape != logits.shape:
            return float("inf")
        return float((split_logits - logits).abs().max() / logits.abs().max().clamp(min=1e-6))


def _compute_dtype(weight: torch.Tensor, device: torch.device) -> torch.dtype:
    """The dtype the LM head's matmul runs in: autocast's when it is on (as nn.Linear would), else the
    weight's."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return weight.dtype


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(hidden, weight, bias).float()


class _LinearCrossEntropy(torch.autograd.Function):
    """Cross-entropy (and optionally KL(base ‖ this)) of `F.linear(hidden, weight, bias)` over chunks of
    rows: forward keeps the per-row log-sum-exp, backward recomputes each chunk's logits."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk: int,
        base_hidden: torch.Tensor | None,
        base_weight: torch.Tensor | None,
        base_bias: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = hidden.size(0)
        ce = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(ce)
        kl = torch.empty_like(ce) if base_hidden is not None else ce.new_empty(0)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, n, chunk):
                logits = _chunk_logits(hidden[s : s + chunk], weight, bias)
                chunk_lse = logits.logsumexp(-1)
                lse[s : s + chunk] = chunk_lse
                ce[s : s + chunk] = chunk_lse - logits.gather(1, targets[s : s + chunk, None]).squeeze(1)
                if base_hidden is not None:  # KL(base ‖ this) = Σ p_base (log p_base − log p)
                    base = _chunk_logits(base_hidden[s : s + chunk], base_weight, base_bias).log_softmax(-1)
                    kl[s : s + chunk] = torch.linalg.vecdot(base.exp(), base - logits + chunk_lse[:, None])
        ctx.chunk = chunk
        ctx.save_for_backward(hidden, weight, bias, targets, lse, base_hidden, base_weight, base_bias)
        return ce, kl

    @staticmethod
    def backward(ctx: Any, grad_ce: torch.Tensor, grad_kl: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, targets, lse, base_hidden, base_weight, base_bias = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        chunk, n = ctx.chunk, hidden.size(0)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        )
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, n, chunk):
                h = hidden[s : s + chunk]
                g_ce = grad_ce[s : s + chunk, None]
                # d loss / d logits = g_ce (p − onehot) + g_kl (p − p_base), p = softmax(logits)
                grad = (_chunk_logits(h, weight, bias) - lse[s : s + chunk, None]).exp_()
                if base_hidden is None:
                    grad.mul_(g_ce)
                else:
                    g_kl = grad_kl[s : s + chunk, None]
                    base = _chunk_logits(base_hidden[s : s + chunk], base_weight, base_bias).softmax(-1)
                    grad.mul_(g_ce + g_kl).sub_(base.mul_(g_kl))
                grad.scatter_add_(1, targets[s : s + chunk, None], -g_ce)
                grad = grad.to(hidden.dtype)
                if need_hidden:
                    torch.mm(grad, weight, out=grad_hidden[s : s + chunk])
                if (
                    need_weight and grad.dtype == torch.float32
                ):  # accumulate in place, no (vocab, width) temporary
                    grad_weight.addmm_(grad.t(), h)
                elif need_weight:  # a float32 sum of the chunks' half-precision products
                    grad_weight.add_(grad.t() @ h)
                if need_bias:
                    grad_bias.add_(grad.sum(0))
        grad_weight = grad_weight.to(weight.dtype) if need_weight else None
        grad_bias = grad_bias.to(bias.dtype) if need_bias else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


def chunked_token_losses(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_size: int | None = None,
    base_hidden: torch.Tensor | None = None,
    base_weight: torch.Tensor | None = None,
    base_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token next-token cross-entropy of the logits `F.linear(hidden, weight, bias)` without ever
    holding them whole: the same values and gradients as `token_losses(F.linear(hidden, weight, bias),
    labels)` (to fp32 rounding), with at most `chunk_size` tokens' logits alive at a time.

    Only the trained positions (shifted label != IGNORE_INDEX) go through the head, in chunks; the
    backward recomputes each chunk's logits to give the gradients of `hidden`, `weight` and `bias`
    (a weight tied to the input embeddings gets both contributions, as autograd adds them). The head's
    matmul runs in autocast's dtype when autocast is on (as `nn.Linear` would), log-softmax in float32.

    With `base_hidden` (the base model's last hidden states of the same batch, and its head's
    `base_weight`/`base_bias`, default: the same head), it also returns the per-token KL(base ‖ this) of
    the next-token distributions at the trained positions — `token_kl` per token — computed from the same
    chunk of logits, with its gradient (base side constant). It serves the module's training loss, its
    validation losses and KL, and a KL regularizer in training; the evaluation's per-token losses
    (`itune.eval.perplexity`) can use it the same way (`split_lm_head(model)`, then the decoder's hidden
    states), which they do not yet: without gradients their logits live for one batch only, not through
    a backward pass.

    Args:
        hidden: last hidden states (batch, positions, width) (the decoder body's output, before the head).
        labels: (batch, positions) token ids, IGNORE_INDEX where not trained (unshifted, as in a batch).
        weight, bias: the LM head's (vocab, width) weight and optional (vocab,) bias.
        chunk_size: tokens per chunk; None: about 128 MB of float32 logits (2**25 / vocab tokens).

    Returns:
        (losses, kl): float32 (batch, positions − 1), 0 at the positions that are not trained; kl is None
        without `base_hidden`.
    """
    b, t, d = hidden.shape
    mask = labels[:, 1:] != IGNORE_INDEX
    where = F.pad(mask, (0, 1)).view(-1).nonzero().squeeze(1)  # flat positions in (batch, positions)
    targets = labels[:, 1:][mask]
    dtype = _compute_dtype(weight, hidden.device)
    chunk = max(1, chunk_size or LOGIT_BUDGET // weight.size(0))

    def rows(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(b * t, -1).index_select(0, where).to(dtype)

    def cast(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.to(dtype)

    base: tuple[torch.Tensor | None, ...] = (None, None, None)
    if base_hidden is not None:  # constants: the gradient flows to this model's side only
        base_weight, base_bias = (weight, bias) if base_weight is None else (base_weight, base_bias)
        base = tuple(
            None if x is None else x.detach() for x in (rows(base_hidden), cast(base_weight), cast(base_bias))
        )
    ce, kl = _LinearCrossEntropy.apply(rows(hidden), cast(weight), cast(bias), targets, chunk, *base)
    losses = ce.new_zeros(b, t - 1).masked_scatter(mask, ce)
    return losses, None if base_hidden is None else kl.new_zeros(b, t - 1).masked_scatter(mask, kl)
