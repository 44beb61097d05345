"""Batched log-likelihood scoring of continuations (multiple choice, perplexity)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from itune.inference.eval_mode import eval_mode


@torch.no_grad()
def continuation_logprobs(
    model: PreTrainedModel,
    pairs: list[tuple[list[int], list[int]]],
    pad_token_id: int,
    batch_size: int = 16,
) -> list[tuple[float, int]]:
    """Sum of log p(continuation token | everything before it) and the continuation length, per pair.

    Sequences (context + continuation) are right-padded and scored in batches, longest first; the result
    keeps the input order.
    """
    with eval_mode(model):
        device = next(model.parameters()).device
        results: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            seqs = [pairs[i][0] + pairs[i][1] for i in idx]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(idx), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, s in enumerate(seqs):
                ids[row, : len(s)] = torch.as_tensor(s)
                mask[row, : len(s)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            for row, i in enumerate(idx):
                context, continuation = pairs[i]
                positions = torch.arange(len(context) - 1, len(context) + len(continuation) - 1)
                token_lp = logprobs[row, positions, torch.as_tensor(continuation)]
                results[i] = (float(token_lp.sum()), len(continuation))
    return results
