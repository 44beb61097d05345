"""The loss of an optimizer step as the mean over all its trained tokens, and the step's logged values.

A step sees k micro-batches (gradient accumulation) on each of W ranks. Lightning divides each
micro-batch's loss by k and DDP averages the gradients over the ranks, so a micro-batch that backpropagates
(its token losses' sum) x k·W / N_step, N_step the trained tokens of the whole step, gives the gradient of
the mean over all the step's tokens however they are split. `StepLoss` counts N_step once a step (from the
loader's read-ahead counts, `itune.data.step_tokens`) and adds up the micro-batches' logged parts, summed
over the ranks once at the step's end. Plain tensors and values: no Lightning here.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from itune.data.step_tokens import STEP_TOKENS, STEP_WINDOW, StepLayout, step_span

log = logging.getLogger(__name__)


def all_ranks_sum(value: torch.Tensor) -> torch.Tensor:
    """`value` summed over the ranks of the default process group: one all-reduce, on a copy."""
    value = value.clone()
    torch.distributed.all_reduce(value)
    return value


def step_share(layout: StepLayout) -> int:
    """k·W: micro-batches a step times ranks, the factor a micro-batch's token sum is scaled by."""
    return layout.accumulate * layout.world_size


class StepLoss:
    """The optimizer step in progress: its trained-token count N_step and its logged parts so far."""

    def __init__(self) -> None:
        self.count: tuple[int, int, torch.Tensor] | None = None  # (first, end batch, N_step) of the step
        self.log_sums: torch.Tensor | None = None  # the step's logged parts, summed over its micro-batches
        self.warned_unannotated = False

    def step_tokens(
        self, batch: dict[str, Any], batch_idx: int, trained: torch.Tensor, layout: StepLayout
    ) -> torch.Tensor:
        """N_step: the trained tokens of the optimizer step's micro-batches on all ranks, counted once a step.

        At the step's first micro-batch (or the first one seen after a resume mid-step), the batch's
        `step_tokens_ahead` (read ahead by `itune.data.step_tokens.StepTokenLoader`) give this rank's
        count, summed over the ranks in one all-reduce (no copy to the host); the step's other micro-batches
        reuse it. A batch without them (a plain DataLoader) counts its own tokens: exact without gradient
        accumulation; with it, every micro-batch is then its own mean (a warning says so).
        """
        first, end = step_span(batch_idx, layout)
        cached = self.count
        if cached is not None and batch_idx != first and cached[0] <= batch_idx < cached[1]:
            return cached[2]
        ahead = batch.get(STEP_TOKENS)
        if ahead is None:
            if layout.accumulate > 1 and not self.warned_unannotated:
                self.warned_unannotated = True
                log.warning(
                    "training batches without %s (not from itune's StepTokenLoader): with "
                    "accumulate_grad_batches=%d each micro-batch's loss is its own token mean",
                    STEP_TOKENS,
                    layout.accumulate,
                )
            count, end = trained * layout.accumulate, batch_idx + 1
        else:
            if ahead.numel() < end - batch_idx:
                if ahead.numel() >= batch[STEP_WINDOW]:
                    raise RuntimeError(
                        f"the training loader reads {batch[STEP_WINDOW]} batch(es) ahead but this step has "
                        f"{end - batch_idx} more (trainer.accumulate_grad_batches={layout.accumulate}); give "
                        "StepTokenLoader a window of at least accumulate_grad_batches"
                    )
                end = batch_idx + ahead.numel()  # the data ends inside this step; Lightning steps there
            count = ahead[: end - batch_idx].sum()
        if layout.world_size > 1:
            count = all_ranks_sum(count)
        self.count = (batch_idx, end, count)
        return count

    def add_parts(self, parts: dict[str, torch.Tensor], batch: dict[str, Any], batch_idx: int) -> bool:
        """Add a micro-batch's logged parts (`ce`, then the regularizer's terms) and token counts, on the
        device; returns whether it is the step's last micro-batch."""
        first, end, n_step = self.count
        real = batch.get("num_real_tokens", torch.zeros((), device=n_step.device))
        rows = batch.get("num_row_tokens", torch.zeros((), device=n_step.device))
        terms = [parts[k] for k in list(parts)[1:]]
        values = [parts["ce"], torch.ones_like(parts["ce"]), real, rows, *terms]
        vector = torch.stack([v.detach().double().reshape(()) for v in values])
        self.log_sums = vector if batch_idx == first or self.log_sums is None else self.log_sums + vector
        return batch_idx + 1 >= end

    def logged(
        self, names: list[str], weight: float, distributed: bool, real_tokens: bool
    ) -> dict[str, float]:
        """The step's `train/loss` (the mean over its trained tokens on all ranks, + `weight` x the
        regularizer's mean over its micro-batches), `train/ce`, `train/<name>` and token counts.

        The sums go over the ranks (`distributed`) and to the host in one transfer.

        Args:
            names: the regularizer's logged keys (`train/<name>`), in the order of `add_parts`' terms.
            weight: the regularizer's weight (0 without one).
            distributed: sum over the ranks of the default process group.
            real_tokens: the batches carry `num_real_tokens`: log real tokens and token efficiency.
        """
        n_step = self.count[2]
        sums = all_ranks_sum(self.log_sums) if distributed else self.log_sums
        host = torch.cat([sums, n_step.double().reshape(1)]).cpu().tolist()
        ce, micro, real_sum, row_sum, *terms = host[:-1]
        logged = {"train/ce": ce, **{k: v / micro for k, v in zip(names, terms, strict=True)}}
        logged = {"train/loss": ce + weight * sum(terms) / micro, **logged, "train/trained_tokens": host[-1]}
        if real_tokens:  # real (not padding) tokens, and their share of the step's rows
            logged |= {"train/real_tokens": real_sum, "train/token_efficiency": real_sum / max(row_sum, 1)}
        return logged
