"""Loss and perplexity of the trained tokens (assistant replies) of reference data sets."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from itune.data.collate import PadCollator
from itune.data.formats import to_messages
from itune.data.sources import load_source
from itune.data.templates import IGNORE_INDEX, Template
from itune.module import token_losses


class PerplexitySuite:
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
    def run(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """`<name>_loss` and `<name>_ppl` per reference set."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        collate = PadCollator(tokenizer.pad_token_id)
        metrics: dict[str, float] = {}
        for name, conversations in self.conversations.items():
            encoded = [
                {k: v[: self.max_length] for k, v in template.encode(c).items()} for c in conversations
            ]
            total, tokens = 0.0, 0
            for start in range(0, len(encoded), self.batch_size):
                batch = collate(encoded[start : start + self.batch_size])
                logits = model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    use_cache=False,
                ).logits
                total += float(token_losses(logits, batch["labels"].to(device)).sum())
                tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            loss = total / max(1, tokens)
            metrics |= {f"{name}_loss": loss, f"{name}_ppl": math.exp(loss)}
        model.train(was_training)
        return metrics, []
