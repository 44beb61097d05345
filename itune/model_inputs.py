"""What a batch gives the model: its input keys (with varlen sizes for flash attention on packed rows),
whether the model's forward takes the loss's item count, and the check that packed examples stay apart."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from itune.inference.eval_mode import eval_mode

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")  # batch keys every model gets
FLASH_VARLEN_INPUTS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")  # packed, flash only


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


def accepts_loss_kwargs(model: nn.Module) -> bool:
    """Whether the (peft-unwrapped) model's forward takes `num_items_in_batch` (transformers' LMs do)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    accepts = getattr(base, "accepts_loss_kwargs", None)
    if accepts is not None:
        return bool(accepts)
    params = inspect.signature(base.forward).parameters.values()
    return any(p.kind is p.VAR_KEYWORD or p.name == "num_items_in_batch" for p in params)


@torch.no_grad()
def packed_isolation_error(model: nn.Module, lengths: tuple[int, int] = (5, 7)) -> float:
    """How much a packed example's logits change because of the example before it in the same row.

    Runs two random sequences alone and packed (position ids restarting, no attention mask, varlen sizes
    on flash attention) in eval mode and returns max |difference| / max |logit| of the second one: ~1e-6
    in fp32 when the model keeps attention inside each example, of order 1 when it does not.
    """
    with eval_mode(model):
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
