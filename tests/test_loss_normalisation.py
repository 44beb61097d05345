"""The training loss is the mean over all trained tokens of an optimizer step: the same gradients for one
batch of 8, 4 x accumulate 2, 2 ranks x 4 and 2 ranks x 2 x accumulate 2, with examples of very
different lengths (a mean of per-micro-batch means would weigh a 3-token example like a 60-token one)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from itune.data.collate import PadCollator
from itune.data.step_tokens import STEP_TOKENS, STEP_WINDOW, StepLayout, StepTokenLoader, annotate, step_span
from itune.data.templates import IGNORE_INDEX
from itune.model import byte_level_tokenizer, tiny_llama
from itune.module import InstructionTuner

TRAINED = [3, 60, 5, 40, 3, 60, 8, 25]  # trained tokens of the 8 examples
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def examples() -> list[dict[str, list[int]]]:
    """A 6-token prompt (not trained) and an answer of TRAINED[i] + 1 tokens (its first label is never
    predicted: the loss shifts labels by one), random ids from a fixed seed."""
    g = torch.Generator().manual_seed(0)
    out = []
    for n in TRAINED:
        ids = torch.randint(1, 300, (7 + n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * 6 + ids[6:]})
    return out


def micro_batches(items: list[dict], size: int, window: int) -> list[dict]:
    batches = [PadCollator(0)(items[i : i + size]) for i in range(0, len(items), size)]
    return list(annotate(batches, window))


def tuner(fused: bool = False) -> InstructionTuner:
    return InstructionTuner(
        tiny_llama(seed=0), optimizer=lambda p: torch.optim.SGD(p, lr=1.0), fused_cross_entropy=fused
    )


def step_grads(module: InstructionTuner, batches: list[dict], layout: StepLayout) -> dict[str, torch.Tensor]:
    """Gradients after backward of every micro-batch's loss / k, as Lightning's accumulation does."""
    for i, batch in enumerate(batches):
        loss, _ = module.training_loss(batch, i, layout)
        (loss / layout.accumulate).backward()
    return {n: p.grad.clone() for n, p in module.model.named_parameters() if p.requires_grad}


def assert_same(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert grads.keys() == reference.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], **TOLERANCE, msg=name)


def reference() -> dict[str, torch.Tensor]:
    return step_grads(tuner(), micro_batches(examples(), 8, 1), StepLayout())


@pytest.mark.parametrize("fused", [False, True], ids=["token_losses", "model_loss"])
def test_accumulation_gives_the_gradient_of_the_whole_batch(fused):
    ref = reference()
    accumulated = step_grads(tuner(fused), micro_batches(examples(), 4, 2), StepLayout(accumulate=2))
    assert_same(accumulated, ref)
    four = step_grads(tuner(fused), micro_batches(examples(), 2, 4), StepLayout(accumulate=4))
    assert_same(four, ref)


def test_a_mean_of_micro_batch_means_differs():
    """Micro-batches without the read-ahead counts fall back to their own token mean: the old loss."""
    ref = reference()
    plain = [
        {k: v for k, v in b.items() if k not in (STEP_TOKENS, STEP_WINDOW)}
        for b in micro_batches(examples(), 4, 2)
    ]
    old = step_grads(tuner(), plain, StepLayout(accumulate=2))
    worst = max(float((old[n] - ref[n]).abs().max() / ref[n].abs().max()) for n in ref)
    assert worst > 0.05, worst


def _rank_grads(rank: int, world: int, init_file: str, out: str) -> None:
    """One rank: its share of the 8 examples, as one batch of 4 and as 2 x accumulate 2; gradients
    averaged over the ranks as DDP does; rank 0 saves them."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mine = examples()[4 * rank : 4 * rank + 4]
        for name, size, k in [("ranks", 4, 1), ("ranks_accumulate", 2, 2)]:
            grads = step_grads(
                tuner(), micro_batches(mine, size, k), StepLayout(accumulate=k, world_size=world)
            )
            for grad in grads.values():
                dist.all_reduce(grad)
                grad /= world
            if rank == 0:
                torch.save(grads, Path(out) / f"{name}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_give_the_gradient_of_the_whole_batch(tmp_path):
    mp.spawn(_rank_grads, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ref = reference()
    for name in ("ranks", "ranks_accumulate"):
        assert_same(torch.load(tmp_path / f"{name}.pt", weights_only=True), ref)


def test_a_short_last_step_is_the_mean_over_its_own_tokens():
    """3 micro-batches with accumulate 2: Lightning steps after batches 0-1 and after batch 2 alone (the
    epoch's end, from `num_training_batches` or the data running out); still divided by k = 2."""
    items = examples()
    alone = step_grads(tuner(), micro_batches(items[4:6], 2, 1), StepLayout())
    for batches, layout in [
        (micro_batches(items[:6], 2, 2), StepLayout(accumulate=2)),  # the data ends after batch 2
        (micro_batches(items[:8], 2, 2), StepLayout(accumulate=2, batches=3)),  # limit_train_batches=3
    ]:
        module = tuner()
        step_grads(module, batches[:2], layout)
        module.model.zero_grad()
        loss, _ = module.training_loss(batches[2], 2, layout)
        (loss / layout.accumulate).backward()
        grads = {n: p.grad for n, p in module.model.named_parameters()}
        assert_same(grads, alone)


def test_read_ahead_counts_and_step_spans():
    batches = [{"labels": torch.tensor([[IGNORE_INDEX] + [1] * n])} for n in (3, 5, 7)]
    out = list(annotate(batches, 2))
    assert [b[STEP_TOKENS].tolist() for b in out] == [[3, 5], [5, 7], [7]]
    assert [b[STEP_WINDOW] for b in out] == [2, 2, 2]
    assert step_span(5, StepLayout(accumulate=4, batches=7)) == (4, 7)
    assert step_span(3, StepLayout(accumulate=4)) == (0, 4)


def test_a_loader_reading_too_few_batches_ahead_is_an_error():
    batches = micro_batches(examples(), 2, 1)
    with pytest.raises(RuntimeError, match="accumulate_grad_batches=2"):
        tuner().training_loss(batches[0], 0, StepLayout(accumulate=2))


def test_lightning_keeps_the_loader_when_it_injects_a_distributed_sampler():
    """Under DDP Lightning re-creates the training DataLoader with its sampler: it stays a
    StepTokenLoader with the same window."""
    from lightning.pytorch.utilities.data import _update_dataloader

    data = [{"input_ids": [1, 2], "labels": [1, 2]}] * 8
    loader = StepTokenLoader(data, batch_size=2, collate_fn=PadCollator(0), window=lambda: 3)
    sampler = DistributedSampler(data, num_replicas=2, rank=1, shuffle=False)
    again = _update_dataloader(loader, sampler)
    assert isinstance(again, StepTokenLoader) and again.window is loader.window
    assert again.sampler is sampler and len(list(again)) == 2
    assert next(iter(again))[STEP_WINDOW] == 3


def alpaca_rows(path: Path) -> Path:
    """16 rows whose answers are 2 to 90 characters (byte tokens): very different trained lengths."""
    sizes = [2, 90, 4, 60, 3, 80, 10, 40] * 2
    rows = [
        {"instruction": f"Say {i}.", "input": "", "output": "ab" * (n // 2) or "a"}
        for i, n in enumerate(sizes)
    ]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


class Capture(L.Callback):
    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self.grads = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.requires_grad}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}


def fit_one_step(data: Path, batch_size: int, accumulate: int) -> Capture:
    from itune.data.datamodule import InstructDataModule
    from itune.resume import ResumeState
    from tests.test_templates import build

    tokenizer = byte_level_tokenizer()
    dm = InstructDataModule(
        sources={"a": {"path": str(data)}},
        tokenizer=tokenizer,
        template=build("chatml", tokenizer),
        val_fraction=0.0,
        batch_size=batch_size,
        pad_to_multiple_of=1,
    )
    capture = Capture()
    L.Trainer(
        accelerator="cpu",
        max_steps=1,
        accumulate_grad_batches=accumulate,
        logger=False,
        log_every_n_steps=1,
        callbacks=[ResumeState(seed=0), capture],  # the resumable sampler keeps the read-ahead loader
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    ).fit(tuner(), datamodule=dm)
    return capture


def test_a_trainer_step_with_accumulation_equals_the_doubled_batch(tmp_path):
    """Through Lightning (its division by k, the datamodule's loader, the resume callback's sampler):
    batch 4 x accumulate 2 gives the gradient and the logged loss of batch 8, to 1e-5."""
    data = alpaca_rows(tmp_path / "rows.json")
    whole, accumulated = fit_one_step(data, 8, 1), fit_one_step(data, 4, 2)
    assert_same(accumulated.grads, whole.grads)
    for key in ("train/loss", "train/trained_tokens", "train/real_tokens"):
        assert accumulated.logged[key] == pytest.approx(whole.logged[key], rel=1e-5), key
    assert whole.logged["train/trained_tokens"] > 8 * 10  # the step's 8 examples, not one micro-batch's 4
