"""Packing: pure bin-packing, the packed collator, packed == padded loss and gradients, datamodule wiring."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from torch import nn

from itune.data import packing as pk
from itune.data.collate import PackCollator, PadCollator
from itune.data.datamodule import InstructDataModule
from itune.data.templates import IGNORE_INDEX
from itune.model import tiny_llama
from itune.module import InstructionTuner, packed_isolation_error, token_losses
from itune.resume import ResumeState
from tests.conftest import write_jsonl
from tests.test_templates import MULTI, SYSTEM, build


def test_doctests():
    assert doctest.testmod(pk).failed == 0


@pytest.mark.parametrize("seed", range(5))
def test_best_fit_decreasing_keeps_every_item_once_within_capacity(seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 300, (400,), generator=g).tolist()
    bins = pk.best_fit_decreasing(lengths, 512)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 512 for b in bins)
    assert len(bins) <= math.ceil(sum(lengths) / 512) * 11 / 9 + 1  # the FFD/BFD bound
    assert bins == pk.best_fit_decreasing(lengths, 512)  # deterministic


@pytest.mark.parametrize("lengths", [[5], [10, 10, 10], [9, 1, 8, 2, 7, 3], list(range(1, 30))])
def test_balanced_rows_fit_and_cover(lengths):
    rows = pk.balanced_rows(lengths, 10 if max(lengths) <= 10 else 40)
    cap = 10 if max(lengths) <= 10 else 40
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= cap for r in rows)
    assert len(rows) <= len(lengths)


def test_too_long_item_is_a_clear_error():
    with pytest.raises(ValueError, match="pack_length"):
        pk.best_fit_decreasing([5, 11], 10)
    with pytest.raises(ValueError, match="pack_length"):
        pk.balanced_rows([11], 10)


def test_length_grouped_order_is_a_seeded_permutation_with_less_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 500, (1000,), generator=g).tolist()
    a = pk.length_grouped_order(lengths, 8, seed=1, epoch=0)
    assert sorted(a) == list(range(1000))
    assert a == pk.length_grouped_order(lengths, 8, seed=1, epoch=0)
    assert a != pk.length_grouped_order(lengths, 8, seed=1, epoch=1)

    def padded(order):
        return sum(8 * max(lengths[i] for i in order[k : k + 8]) for k in range(0, len(order), 8))

    shuffled = torch.randperm(1000, generator=g).tolist()
    assert padded(a) < 0.7 * padded(shuffled)


# ------------------------------------------------------------------------------------------ collator
def encoded(template, conversations):
    return [{**template.encode(c), "source": 0} for c in conversations]


def answer(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": "Write."}, {"role": "assistant", "content": "x" * n}]


def test_pack_collator_rows_positions_and_boundary_labels(tokenizer):
    chatml = build("chatml", tokenizer)
    examples = encoded(chatml, [MULTI, answer(5), SYSTEM])
    lens = [len(e["input_ids"]) for e in examples]
    budget = max(lens) + 20
    batch = PackCollator(tokenizer.pad_token_id, budget, pad_to_multiple_of=8)(examples)
    assert "attention_mask" not in batch and batch["input_ids"].shape == batch["position_ids"].shape
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] <= budget + 7
    assert int(batch["num_real_tokens"]) == sum(lens)
    # every example appears whole in a row, starting at position 0, its first label masked
    starts = (batch["position_ids"] == 0).nonzero().tolist()
    found = []
    for r, c in starts:
        for e in examples:
            k = len(e["input_ids"])
            if batch["input_ids"][r, c : c + k].tolist() == e["input_ids"]:
                assert batch["position_ids"][r, c : c + k].tolist() == list(range(k))
                assert batch["labels"][r, c] == IGNORE_INDEX
                assert batch["labels"][r, c + 1 : c + k].tolist() == e["labels"][1:]
                found.append(k)
                break
    assert sorted(found) == sorted(lens)
    trained_padded = (PadCollator(tokenizer.pad_token_id)(examples)["labels"][:, 1:] != IGNORE_INDEX).sum()
    assert (batch["labels"][:, 1:] != IGNORE_INDEX).sum() == trained_padded  # the same trained tokens
    cu = batch["cu_seq_lens_q"]
    assert cu[-1] == batch["input_ids"].numel() and batch["max_length_q"] <= batch["input_ids"].shape[1]


# --------------------------------------------------------------------------------------- equivalence
def summed_loss_and_grads(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    loss = token_losses(model(**inputs, use_cache=False).logits, batch["labels"]).sum()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("scope", ["batch", "dataset"])
def test_packed_equals_padded_loss_and_gradients(tokenizer, attn, scope):
    """A multi-turn example, a short one, and one exactly at the budget's edge (a row of its own)."""
    chatml = build("chatml", tokenizer)
    examples = encoded(chatml, [SYSTEM, answer(3), answer(120), MULTI])
    budget = len(examples[2]["input_ids"])  # the edge: this example fills a row exactly
    assert budget > sum(len(e["input_ids"]) for e in examples[:2])
    pack = PackCollator(tokenizer.pad_token_id, budget, pad_to_multiple_of=1)
    if scope == "batch":
        packed = pack(examples)
    else:
        lengths = [len(e["input_ids"]) for e in examples]
        rows = pk.PackedDataset(examples, pk.best_fit_decreasing(lengths, budget))
        packed = pack([rows[i] for i in range(len(rows))])
    assert packed["input_ids"].shape[1] == budget and packed["input_ids"].shape[0] >= 2
    assert any(p[-1] == budget - 1 for p in packed["position_ids"].tolist())  # a full row, no padding
    padded = PadCollator(tokenizer.pad_token_id)(examples)

    model = tiny_llama()
    model.set_attn_implementation(attn)
    loss_pad, grads_pad = summed_loss_and_grads(model, padded)
    loss_pack, grads_pack = summed_loss_and_grads(model, packed)
    torch.testing.assert_close(loss_pack, loss_pad, rtol=1e-5, atol=1e-5)
    assert grads_pad.keys() == grads_pack.keys() and grads_pad
    for name in grads_pad:
        torch.testing.assert_close(grads_pack[name], grads_pad[name], rtol=1e-4, atol=1e-6, msg=name)

    # the module's loss is the mean over the same trained tokens either way
    module = InstructionTuner(model, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    module.log = lambda *a, **k: None  # no trainer attached
    module.optimizers = lambda: torch.optim.SGD(model.parameters(), lr=0.1)
    torch.testing.assert_close(module.training_step(packed, 0), module.training_step(padded, 0))

    # control: the same rows without restarting positions (attention crossing examples) differ
    leaky = {k: packed[k] for k in ("input_ids", "labels")}
    leaky_loss, _ = summed_loss_and_grads(model, leaky)
    assert abs(leaky_loss - loss_pad) > 1e-3


class NoIsolation(nn.Module):
    """A model that ignores position_ids: packed examples would see each other."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.config = inner, inner.config

    def get_input_embeddings(self) -> nn.Module:
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, position_ids=None, **kwargs):
        return self.inner(input_ids=input_ids, use_cache=False)


def test_isolation_check_accepts_sdpa_and_refuses_a_leaky_model(tokenizer):
    assert packed_isolation_error(tiny_llama()) < 1e-4
    module = InstructionTuner(NoIsolation(tiny_llama()), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    module.log = lambda *a, **k: None
    batch = PackCollator(tokenizer.pad_token_id, 64)(encoded(build("chatml", tokenizer), [answer(3)] * 2))
    with pytest.raises(RuntimeError, match="data.packing=false"):
        module.training_step(batch, 0)


# ---------------------------------------------------------------------------------------- datamodule
def rows(n: int) -> list[dict]:
    return [{"instruction": f"q {i}?", "input": "", "output": "answer " * (1 + i % 7)} for i in range(n)]


def datamodule(tmp_path, tokenizer, **kw) -> InstructDataModule:
    path = write_jsonl(tmp_path / "a.jsonl", rows(40))
    dm = InstructDataModule(
        sources={"a": {"path": str(path)}},
        tokenizer=tokenizer,
        template=build("chatml", tokenizer),
        val_fraction=0.1,
        max_length=256,
        **({"batch_size": 4, "packing": False, "group_by_length": False} | kw),
    )
    dm.setup("fit")
    return dm


def test_datamodule_packs_batches(tmp_path, tokenizer):
    dm = datamodule(tmp_path, tokenizer, packing=True)
    padded = datamodule(tmp_path, tokenizer, packing=False, group_by_length=False)
    assert 0 < padded.stats["data/packing_efficiency"] < dm.stats["data/packing_efficiency"] <= 1
    batches = list(dm.train_dataloader())
    assert len(batches) == 9 and all("position_ids" in b for b in batches)  # 36 examples, 4 a step
    assert sum(int(b["num_real_tokens"]) for b in batches) == sum(dm.lengths)
    val = next(iter(dm.val_dataloader()))
    assert "attention_mask" in val and "source" in val  # validation stays padded (per-source losses)


def test_datamodule_dataset_scope_rows_cover_the_mixture_once(tmp_path, tokenizer):
    dm = datamodule(tmp_path, tokenizer, packing=True, pack_scope="dataset", pack_length=256)
    assert dm.stats["data/packed_rows"] == len(dm.bins) < len(dm.lengths) / 2
    assert sorted(i for b in dm.bins for i in b) == list(range(len(dm.train_set)))
    batches = list(dm.train_dataloader())
    assert len(batches) == math.ceil(len(dm.bins) / 4)
    assert sum(int(b["num_real_tokens"]) for b in batches) == sum(dm.lengths)
    assert all(b["input_ids"].shape[1] <= 256 for b in batches)


def test_pack_length_below_max_length_is_refused(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="pack_length"):
        datamodule(tmp_path, tokenizer, packing=True, pack_length=64)


@pytest.mark.parametrize(
    "kw",
    [
        {"packing": True},
        {"packing": True, "pack_scope": "dataset", "batch_size": 1},
        {"group_by_length": True},
    ],
)
def test_resumed_loader_continues_the_same_order(tmp_path, tokenizer, kw):
    """The resume callback's batch sampler skips trained batches of packed and length-grouped loaders."""
    dm = datamodule(tmp_path, tokenizer, **kw)
    full = [b["input_ids"] for b in ResumeState(seed=3).wrap(dm.train_dataloader())]
    state = ResumeState(seed=3)
    state.load_state_dict({"epoch": 0, "batches": 2, "seed": 3})
    resumed = [b["input_ids"] for b in state.wrap(dm.train_dataloader())]
    assert len(resumed) == len(full) - 2 and len(full) > 2
    assert all(torch.equal(a, b) for a, b in zip(resumed, full[2:], strict=True))
