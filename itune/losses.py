"""Token-level losses shared by the module and evaluation: KL divergence to a reference (base) model."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
