"""Loss and perplexity of the trained tokens (assistant replies) of reference data sets."""

from __future__ import annotations

import json
import math
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from itune.data.collate import PadCollator
from itune.data.formats import to_messages
from itune.data.messages import IGNORE_INDEX
from itune.data.sources import load_source
from itune.data.templates import Template
from itune.eval.items import ItemScores, item_ids, item_scores
from itune.eval.runner import ScoredSuite
from itune.inference.eval_mode import eval_mode
from itune.losses import token_losses


class PerplexitySuite(ScoredSuite):
    """Mean loss per trained token and its perplexity on each reference set, through the run's template.

    Args:
        references: {name: {path, format, fields}}: local files (or hub ids) in any itune data format.
        limit: rows per reference set (the first ones).
        max_length: longer examples are cut to this many tokens.
        batch_size: examples per forward pass.
        kind: `general` or `domain`, for the forgetting report.
    """

    def __init__(
        self,
        references: dict[str, dict[str, Any]],
        limit: int | None = 200,
        max_length: int = 1024,
        batch_size: int = 8,
        kind: str = "general",
    ) -> None:
        if not references:
            raise ValueError("a perplexity suite needs at least one reference set: {name: {path, format}}")
        self.conversations: dict[str, list] = {}
        for name, ref in references.items():
            rows = load_source(ref["path"])
            n = len(rows) if limit is None else min(limit, len(rows))
            fmt, fields = ref.get("format", "alpaca"), ref.get("fields")
            self.conversations[name] = [to_messages(rows[i], fmt, fields) for i in range(n)]
        self.max_length, self.batch_size, self.kind = max_length, batch_size, kind

    @torch.no_grad()
    def score(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template
    ) -> tuple[dict[str, float], list[dict[str, Any]], ItemScores]:
        """`<name>_loss` and `<name>_ppl` per reference set, and each example's summed loss and tokens."""
        with eval_mode(model):
            metrics: dict[str, float] = {}
            rows: list[dict[str, Any]] = []
            estimators: dict[str, dict[str, Any]] = {}
            for name, conversations in self.conversations.items():
                losses, tokens = self._example_losses(model, tokenizer, template, conversations)
                loss = sum(losses) / max(1, sum(tokens))
                metrics |= {f"{name}_loss": loss, f"{name}_ppl": math.exp(loss)}
                texts = [f"{name}\n{json.dumps(c, sort_keys=True)}" for c in conversations]
                rows += [
                    {"id": i, f"{name}_loss_sum": lo, f"{name}_tokens": n}
                    for i, lo, n in zip(item_ids(texts), losses, tokens, strict=True)
                ]
                ratio = {"num": f"{name}_loss_sum", "den": f"{name}_tokens"}
                estimators |= {
                    f"{name}_loss": {"stat": "ratio", **ratio},
                    f"{name}_ppl": {"stat": "exp_ratio", **ratio},
                }
        return metrics, [], item_scores(estimators, rows)

    def _example_losses(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        template: Template,
        conversations: list[list[dict[str, str]]],
    ) -> tuple[list[float], list[int]]:
        """Summed loss over the trained tokens and their number, per conversation."""
        device = next(model.parameters()).device
        collate = PadCollator(tokenizer.pad_token_id)
        encoded = [{k: v[: self.max_length] for k, v in template.encode(c).items()} for c in conversations]
        losses: list[float] = []
        tokens: list[int] = []
        for start in range(0, len(encoded), self.batch_size):
            batch = collate(encoded[start : start + self.batch_size])
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                use_cache=False,
            ).logits
            losses += token_losses(logits, batch["labels"].to(device)).sum(dim=1).double().tolist()
            tokens += (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1).tolist()
        return losses, tokens
