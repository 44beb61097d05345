"""Batch tokenized examples: right padding (labels masked on padding) or packed rows (no padding between)."""

from __future__ import annotations

from typing import Any

import torch

from itune.data.messages import IGNORE_INDEX
from itune.data.packing import balanced_rows, packed_position_ids, padded_width


class PadCollator:
    """Pad `input_ids`/`labels` to the longest example (rounded up to `pad_to_multiple_of`).

    Padding positions get attention 0 and label IGNORE_INDEX; the pad id never decides what is trained,
    so a tokenizer whose pad token equals its EOS still trains the EOS. Other integer fields (such as
    `source`) are stacked as they are.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 1) -> None:
        self.pad_token_id = pad_token_id
        self.multiple = max(1, pad_to_multiple_of)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        width = -(-longest // self.multiple) * self.multiple
        n = len(examples)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        for i, e in enumerate(examples):
            k = len(e["input_ids"])
            input_ids[i, :k] = torch.as_tensor(e["input_ids"])
            labels[i, :k] = torch.as_tensor(e["labels"])
            attention_mask[i, :k] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        batch["num_real_tokens"] = attention_mask.sum()
        batch["num_row_tokens"] = torch.tensor(n * width)
        if "source" in examples[0]:
            batch["source"] = torch.as_tensor([e["source"] for e in examples], dtype=torch.long)
        return batch


class PackCollator:
    """Lay examples side by side in rows of at most `pack_length` tokens (padding-free batches).

    Items are examples (`pack_scope=batch`: the batch's examples are laid into balanced rows by
    `balanced_rows`) or rows packed ahead of time (`{"examples": [...]}`, `pack_scope=dataset`). The
    batch has no `attention_mask`: `position_ids` restart at 0 for every example (and for the padding
    tail), and transformers builds a block-diagonal causal mask from them on sdpa/eager, or uses the
    variable-length kernel on flash attention with `cu_seq_lens_q/k` and `max_length_q/k` (over the
    flattened rows). The first label of every example is IGNORE_INDEX, so the last token of one example
    never learns to predict the next example's first token; without packing that label is never used
    either (the loss shifts labels by one), so the trained tokens and the loss are the same.

    Also returns `num_real_tokens` (tokens that are not padding) and `num_row_tokens` (rows x width).
    """

    def __init__(self, pad_token_id: int, pack_length: int, pad_to_multiple_of: int = 1) -> None:
        self.pad_token_id, self.pack_length = pad_token_id, pack_length
        self.multiple = max(1, pad_to_multiple_of)

    def rows(self, items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """The examples of each row."""
        if items and "examples" in items[0]:
            return [item["examples"] for item in items]
        lengths = [len(e["input_ids"]) for e in items]
        return [[items[i] for i in row] for row in balanced_rows(lengths, self.pack_length)]

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = self.rows(items)
        lengths = [[len(e["input_ids"]) for e in row] for row in rows]
        width = padded_width(max(sum(r) for r in lengths), self.multiple)
        n = len(rows)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.empty((n, width), dtype=torch.long)
        seq_lens: list[int] = []
        for i, (row, lens) in enumerate(zip(rows, lengths, strict=True)):
            at = 0
            for e, k in zip(row, lens, strict=True):
                input_ids[i, at : at + k] = torch.as_tensor(e["input_ids"])
                labels[i, at : at + k] = torch.as_tensor(e["labels"])
                labels[i, at] = IGNORE_INDEX  # never predicted from the previous example
                at += k
            position_ids[i] = torch.as_tensor(packed_position_ids(lens, width))
            seq_lens += lens + ([width - at] if width > at else [])
        cu = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.as_tensor(seq_lens, dtype=torch.int32), 0)
        real = sum(sum(r) for r in lengths)
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": max(seq_lens),
            "max_length_k": max(seq_lens),
            "num_real_tokens": torch.tensor(real),
            "num_row_tokens": torch.tensor(n * width),
        }
