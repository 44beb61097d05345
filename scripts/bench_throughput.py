"""Throughput side by side: itune (Lightning) vs a hand-written PyTorch loop vs TRL's SFTTrainer.

    python scripts/bench_throughput.py                     # tiny + demo, packed and padded, 6 repeats (~1 h)
    python scripts/bench_throughput.py --models tiny --steps 10 --repeats 4
    python scripts/bench_throughput.py --models tiny --profile   # + the top costs of an itune step
    python scripts/bench_throughput.py --models demo --runners itune itune_full --synthetic --batch-size 8 \
        --packing off --repeats 1 --steps 2                # peak memory, 8 rows x 512 tokens, chunked on/off
    python scripts/bench_throughput.py --efficiency-only   # Alpaca packing efficiency at 1,024 tokens

Every runner trains the same model (LoRA r=8 on all linear layers), on the same examples in the same
order and batches (`--batch-size` examples a step, `--max-length` tokens at most, packed into rows of
max_length tokens or padded), with AdamW at a constant LR, gradient clipping at 1.0, fp32 on CPU, for
`--warmup` + `--steps` optimizer steps; only the last `--steps` are timed. Each runner runs in its own
process, so peak RSS is its own (it includes the model and the imports, which are the same for all).

- Repeats: every runner runs `--repeats` times, interleaved (A B C, C B A, A B C, …: the order reverses each
  repeat, so a drift of the machine's speed hits every runner alike). A ratio (`x hand`) is computed per
  repeat (runner / hand of the same repeat) and reported as its median over repeats with a distribution-free
  95% interval from order statistics ([min, max] for 6-8 repeats, ~97% coverage; below 6 repeats the interval
  is [min, max] with its lower coverage printed, e.g. `(94%)` for 5).
- real tok/s: median over the timed steps of non-padding tokens / step time; s/step: median step time
  (every runner trains the same batches, so medians compare; they resist a busy machine); the table shows
  their medians over repeats.
- Runners: `itune` trains as itune does by default: the chunked cross-entropy (the LM head and the loss over
  chunks of tokens, never the full logits), LoRA dropout fused into lora_A (`itune.lora_dropout`) and
  silu(gate) recomputed in the MLP's backward (`itune.swiglu`);
  `itune_full` with `chunked_loss=False` and stock MLP and dropout layers (itune before its memory work: the
  full logits, as the hand loop and TRL have). `--lora-dropout 0.05` is itune's default; 0 (the
  benchmark's default) makes the dropout layers identities, as in the earlier tables.
- peak MB: the training's peak memory, from the first step to the last (the model, the optimizer and the
  imports included): resident set size on CPU (the kernel's high-water mark, reset before training), or
  `torch.cuda.max_memory_allocated` on GPU; `base MB` is what was there before the first step.
- `--profile`: after the table, one more run of `itune` (and of the hand loop) per model and packing under
  torch.profiler, printing the top costs of a step: Lightning's hooks appear as regions
  (`[LightningModule]…`, `[Strategy]…`, `[Callback]…`), the hand loop's phases as `hand.*`.
- data share: time spent fetching and collating batches / step time.
- MFU (GPU only): tokens/s x FLOPs per token / peak FLOP/s, with FLOPs per token = 6N (full fine-tune) or
  4N (LoRA: no weight gradients of the frozen base, the adapters are negligible) + 12 L d s_ctx for the
  attention scores (L layers, width d, s_ctx the mean attended context, ~half the row length when causal).
  On CPU it prints n/a.
- TRL runs twice: with SFTConfig's defaults (bf16=True and gradient_checkpointing=True unless set: see the
  note printed under the table) and with bf16=False, gradient_checkpointing=False (`trl fp32`).

Needs the `bench` extra (`pip install -e '.[bench]'`) for TRL; rows of a missing runner are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "alpaca_5000.json"
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peaks


# ------------------------------------------------------------------------------------------ shared setup
def load(model_name: str, lora_dropout: float = 0.0, fuse_dropout: bool = False) -> tuple[Any, Any, Any]:
    """(LoRA model, tokenizer, template) of `tiny` or `demo`, as itune builds them; `fuse_dropout`: with
    itune's fused LoRA dropout (itune.lora_dropout) and recomputed silu (itune.swiglu), else stock layers."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from itune.model import apply_peft

    torch.manual_seed(0)
    lora = OmegaConf.load(ROOT / "conf" / "peft" / "lora.yaml")
    lora.lora_dropout = lora_dropout
    if model_name == "tiny":
        from itune.model import byte_level_tokenizer, tiny_llama

        tok, model, tpl = byte_level_tokenizer(), tiny_llama(), "chatml"
    else:
        from itune.demo_model import load_demo_model, load_demo_tokenizer

        tok, model, tpl = load_demo_tokenizer(), load_demo_model(), "tokenizer"
    template = instantiate(OmegaConf.load(ROOT / "conf" / "template" / f"{tpl}.yaml"), tokenizer=tok)
    if fuse_dropout:  # itune's memory savings: silu(gate) recomputed, LoRA dropout fused
        from itune.swiglu import recompute_silu

        recompute_silu(model)
    return apply_peft(model, instantiate(lora), fuse_dropout=fuse_dropout), tok, template


def examples(template: Any, n: int, max_length: int, data: Path) -> list[dict[str, list[int]]]:
    """The first n Alpaca rows that fit max_length, encoded by the template (input_ids, labels)."""
    from itune.data.formats import RowError, to_messages
    from itune.data.templates import IGNORE_INDEX

    text = data.read_text()
    rows = json.loads(text) if data.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x]
    out = []
    for row in rows:
        try:
            enc = template.encode(to_messages(row, "alpaca"))
        except RowError:  # e.g. an empty output
            continue
        if len(enc["input_ids"]) <= max_length and any(x != IGNORE_INDEX for x in enc["labels"]):
            out.append({"input_ids": enc["input_ids"], "labels": enc["labels"]})
        if len(out) == n:
            return out
    raise SystemExit(f"{data} has only {len(out)} rows of at most {max_length} tokens; need {n}")


def synthetic_examples(tok: Any, n: int, length: int) -> list[dict[str, list[int]]]:
    """n rows of exactly `length` random token ids, the first half masked as a prompt (a fixed shape)."""
    import random

    from itune.data.templates import IGNORE_INDEX

    rng, vocab = random.Random(0), len(tok)
    rows = []
    for _ in range(n):
        ids = [rng.randrange(vocab) for _ in range(length)]
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (length // 2) + ids[length // 2 :]})
    return rows


def lora_flops_per_token(model: Any, row_tokens: float) -> float:
    """4N + 12 L d s_ctx (LoRA), s_ctx ~ half the mean row length (causal)."""
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    return 4 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * row_tokens / 2


class Timer:
    """Accumulates seconds spent in wrapped calls (data fetching and collation)."""

    def __init__(self) -> None:
        self.seconds, self.on = 0.0, False

    def wrap(self, fn: Any) -> Any:
        def timed(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                if self.on:
                    self.seconds += time.perf_counter() - t

        return timed


class Memory:
    """The training's peak memory: CPU resident set (high-water mark reset at `start`) or GPU allocations."""

    def __init__(self) -> None:
        import torch

        self.cuda = torch.cuda.is_available()
        self.base_mb = 0.0

    @staticmethod
    def _status_mb(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def start(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base_mb = torch.cuda.memory_allocated() / 2**20
            return
        with contextlib.suppress(OSError):  # reset VmHWM to the current RSS (Linux)
            Path("/proc/self/clear_refs").write_text("5")
        self.base_mb = self._status_mb("VmRSS")

    def peak_mb(self) -> float:
        import torch

        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        return self._status_mb("VmHWM")


def lightning_regions() -> Any:
    """A Lightning profiler that only opens a torch.profiler region per hook (named as Lightning names it)."""
    import torch
    from lightning.pytorch.profilers import Profiler

    class Regions(Profiler):
        def __init__(self) -> None:
            super().__init__()
            self.open: dict[str, Any] = {}

        def start(self, action_name: str) -> None:
            region = torch.autograd.profiler.record_function(action_name)
            region.__enter__()
            self.open[action_name] = region

        def stop(self, action_name: str) -> None:
            region = self.open.pop(action_name, None)
            if region is not None:
                region.__exit__(None, None, None)

        def summary(self) -> str:
            return ""

    return Regions()


def torch_profiler(args: argparse.Namespace) -> Any:
    """torch.profiler over the timed steps (call `.step()` after every step; the table lands in
    `args.profile_table`), or None without --profile."""
    import torch

    if not args.profile:
        return None
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    schedule = torch.profiler.schedule(wait=max(0, args.warmup - 1), warmup=1, active=args.steps, repeat=1)

    def ready(prof: Any) -> None:
        args.profile_table = profile_table(prof)

    return torch.profiler.profile(activities=activities, schedule=schedule, on_trace_ready=ready)


def profile_table(prof: Any, rows: int = 25) -> str:
    """The profiler's top rows by total time (Lightning's hook regions, the hand loop's phases, and ops)."""
    import torch

    sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60)


def region(name: str, on: bool) -> Any:
    """A named torch.profiler region when profiling, else nothing."""
    import torch

    return torch.autograd.profiler.record_function(name) if on else contextlib.nullcontext()


# -------------------------------------------------------------------------------------------- runners
def run_hand(model: Any, batches: list, collate: Any, args: argparse.Namespace, timer: Timer) -> list[float]:
    """The floor: collate, forward, masked mean loss, backward, clip, AdamW step."""
    import torch

    from itune.data.templates import IGNORE_INDEX
    from itune.module import model_inputs, token_losses, uses_flash_attention

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    flash, collate = uses_flash_attention(model), timer.wrap(collate)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    prof, on = torch_profiler(args), bool(args.profile)
    if prof is not None:
        prof.start()
    times = []
    for i, exs in enumerate(batches):
        timer.on, start = i >= args.warmup, time.perf_counter()
        with region("hand.collate", on):
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in collate(exs).items()}
        with region("hand.forward_loss", on):
            logits = model(**model_inputs(batch, flash), use_cache=False).logits
            trained = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
            loss = token_losses(logits, batch["labels"]).sum() / trained
        with region("hand.backward", on):
            loss.backward()
        with region("hand.clip_step_zero_grad", on):
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if prof is not None:
            prof.step()
    if prof is not None:
        prof.stop()
    return times[args.warmup :]


def run_itune(model: Any, batches: list, collate: Any, args: argparse.Namespace, timer: Timer) -> list[float]:
    """InstructionTuner under lightning.Trainer, data from a datasets.Dataset as the datamodule serves it."""
    from functools import partial

    import lightning as L
    import torch
    from datasets import Dataset

    from itune.data.step_tokens import StepTokenLoader
    from itune.module import InstructionTuner

    rows = [e for b in batches for e in b]
    data = Dataset.from_list(rows).with_format(columns=["input_ids", "labels"])

    class Timed(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data)

        __getitem__ = timer.wrap(lambda self, i: data[i])

    marks: list[float] = []
    prof = torch_profiler(args)

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *a: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks.append(time.perf_counter())
            timer.on = len(marks) >= args.warmup
            if prof is not None:
                prof.step()

    # itune's training loader: each batch carries the trained tokens of its step (read ahead on the host)
    loader = StepTokenLoader(
        Timed(), batch_size=args.batch_size, shuffle=False, collate_fn=timer.wrap(collate), window=1
    )
    module = InstructionTuner(
        model,
        optimizer=partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.0),
        chunked_loss=args.runner != "itune_full",
    )
    trainer = L.Trainer(
        accelerator="cpu" if not torch.cuda.is_available() else "gpu",
        devices=1,
        precision="32-true",
        max_steps=len(batches),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[Clock()],
        profiler=lightning_regions() if prof is not None else None,
    )
    if prof is not None:
        prof.start()
    trainer.fit(module, train_dataloaders=loader)
    if prof is not None:
        prof.stop()
    return [b - a for a, b in zip(marks[args.warmup - 1 :], marks[args.warmup :], strict=False)]


def run_trl(model: Any, batches: list, tok: Any, args: argparse.Namespace, timer: Timer) -> list[float]:
    """TRL's SFTTrainer on the same pre-tokenized rows (labels given), sequential order, constant LR."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = [e for b in batches for e in b]
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a: Any, **k: Any) -> None:
            marks.append(time.perf_counter())
            timer.on = len(marks) >= args.warmup

    class Sequential(SFTTrainer):
        def _get_train_sampler(self, *a: Any, **k: Any) -> torch.utils.data.Sampler:
            return torch.utils.data.SequentialSampler(self.train_dataset)

    settings = TRL_SETTINGS[args.runner]
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out,
            max_steps=len(batches),
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr,
            weight_decay=0.0,
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_grad_norm=1.0,
            max_length=None if args.packing else args.max_length,  # rows are pre-filtered to max_length
            padding_free=args.packing,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
            seed=0,
            **settings,
        )
        trainer = Sequential(
            model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok
        )
        trainer.data_collator = timer.wrap(trainer.data_collator)
        trainer.add_callback(Clock())
        trainer.train()
    return [b - a for a, b in zip(marks[args.warmup - 1 :], marks[args.warmup :], strict=False)]


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One runner in this process; returns its measurements."""
    import torch

    from itune.data.collate import PackCollator, PadCollator

    args = argparse.Namespace(**spec)
    torch.set_num_threads(args.threads)
    model, tok, template = load(args.model, args.lora_dropout, fuse_dropout=args.runner == "itune")
    n = (args.warmup + args.steps) * args.batch_size
    if args.synthetic:
        rows = synthetic_examples(tok, n, args.max_length)
    else:
        rows = examples(template, n, args.max_length, Path(args.data))
    batches = [rows[i : i + args.batch_size] for i in range(0, n, args.batch_size)]
    collate = (
        PackCollator(tok.pad_token_id, args.max_length, 8)
        if args.packing
        else PadCollator(tok.pad_token_id, 8)
    )
    timed = batches[args.warmup :]
    reals = [sum(len(e["input_ids"]) for e in b) for b in timed]
    real = sum(reals)
    slots = sum(int(collate(b)["num_row_tokens"]) for b in timed)
    import datasets  # noqa: F401  (imported before the memory baseline, as every runner's are)
    import lightning  # noqa: F401

    timer, memory = Timer(), Memory()
    memory.start()
    if args.runner == "hand":
        times = run_hand(model, batches, collate, args, timer)
    elif args.runner.startswith("itune"):
        times = run_itune(model, batches, collate, args, timer)
    else:
        times = run_trl(model, batches, tok, args, timer)
    # medians over the timed steps (the same batches for every runner): robust to a busy machine
    seconds = sum(times)
    rate = statistics.median(n / t for n, t in zip(reals, times, strict=True))
    flops = lora_flops_per_token(model.get_base_model(), slots / max(1, len(timed)))
    mfu = None
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
        mfu = rate * flops / peak if peak else None
    return {
        "s_per_step": statistics.median(times),
        "tokens_per_s": rate,
        "data_share": timer.seconds / seconds,
        "efficiency": real / slots,
        "peak_mb": memory.peak_mb(),
        "base_mb": memory.base_mb,
        "mfu": mfu,
        "flops_per_token": flops,
        "profile": getattr(args, "profile_table", None),
    }


# ---------------------------------------------------------------------------------------------- driver
def alpaca_efficiency(data: Path, budget: int = 1024, batch_size: int = 8) -> list[tuple[str, float]]:
    """Real / row tokens of Alpaca with the demo tokenizer: packed (dataset, batch scope) and padded."""
    import numpy as np
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from itune.data import packing as pk
    from itune.data.formats import RowError, to_messages
    from itune.demo_model import load_demo_tokenizer

    cfg = OmegaConf.load(ROOT / "conf" / "template" / "tokenizer.yaml")
    template = instantiate(cfg, tokenizer=load_demo_tokenizer())
    conversations = []
    for row in json.loads(data.read_text()):
        try:
            conversations.append(to_messages(row, "alpaca"))
        except RowError:  # e.g. an empty output
            continue
    encoded = template.encode_batch(conversations)
    lengths = [len(e["input_ids"]) for e in encoded if len(e["input_ids"]) <= budget]
    bins = pk.best_fit_decreasing(lengths, budget)
    order = np.random.default_rng(0).permutation(len(lengths)).tolist()
    grouped = pk.length_grouped_order(lengths, batch_size, seed=0)

    def epoch(order: list[int], packed: bool) -> float:
        real = slots = 0
        for k in range(0, len(order), batch_size):
            lens = [lengths[i] for i in order[k : k + batch_size]]
            rows_ = [sum(lens[i] for i in r) for r in pk.balanced_rows(lens, budget)] if packed else lens
            real, slots = real + sum(rows_), slots + len(rows_) * pk.padded_width(max(rows_), 8)
        return real / slots

    return [
        (
            f"packed, dataset scope ({len(lengths)} examples, {len(bins)} rows)",
            sum(lengths) / len(bins) / budget,
        ),
        (f"packed, batch scope (batch {batch_size})", epoch(order, True)),
        (f"padded, shuffled (batch {batch_size})", epoch(order, False)),
        (f"padded, length-grouped (batch {batch_size})", epoch(grouped, False)),
    ]


RUNNERS = ["hand", "itune", "itune_full", "trl_fp32", "trl_gc", "trl"]
LABELS = {
    "hand": "hand loop",
    "itune": "itune (chunked CE)",
    "itune_full": "itune, full logits, stock LoRA dropout",
    "trl_fp32": "trl fp32",  # bf16=False, gradient_checkpointing=False
    "trl_gc": "trl fp32 + grad ckpt",  # bf16=False, gradient_checkpointing=True (its default)
    "trl": "trl defaults",  # bf16=True (autocast), gradient_checkpointing=True
}
TRL_SETTINGS = {
    "trl_fp32": {"bf16": False, "gradient_checkpointing": False},
    "trl_gc": {"bf16": False},
    "trl": {},
}


def spawn(spec: dict[str, Any], timeout: float) -> dict[str, Any] | str:
    """Run one worker in a fresh process; its result, or a short reason it failed."""
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    env = os.environ | {"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return (done.stderr.strip().splitlines() or ["failed"])[-1][:100]


def fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def median_interval(xs: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(median, low, high, coverage): a distribution-free interval for the median from order statistics.

    [x_(k), x_(n+1-k)] covers the median with probability 1 - 2 P(Binomial(n, 1/2) <= k - 1); k is the
    largest with coverage >= level, or 1 ([min, max]) when even that falls short (fewer than 6 values).
    """
    x, n = sorted(xs), len(xs)

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= level:
        k += 1
    return statistics.median(x), x[k - 1], x[n - k], coverage(k)


def ratio_cell(values: list[float]) -> str:
    """`median [low, high]` of per-repeat ratios, the coverage added when below 95%."""
    if not values:
        return "-"
    mid, lo, hi, cover = median_interval(values)
    if len(values) == 1:
        return f"{mid:.2f}"
    note = f" ({100 * cover:.0f}%)" if cover < 0.95 else ""
    return f"{mid:.2f} [{lo:.2f}, {hi:.2f}]{note}"


def spec_for(
    args: argparse.Namespace, model: str, runner: str, packing: bool, profile: bool
) -> dict[str, Any]:
    return {
        "model": model,
        "runner": runner,
        "packing": packing,
        "steps": args.trl_defaults_steps if runner == "trl" else args.steps,
        "warmup": 1 if runner == "trl" else args.warmup,
        "batch_size": args.batch_size,
        "max_length": args.tiny_max_length if model == "tiny" else args.demo_max_length,
        "lr": args.lr,
        "threads": args.threads,
        "data": str(args.data),
        "synthetic": args.synthetic,
        "profile": profile,
        "lora_dropout": args.lora_dropout,
    }


def run_interleaved(args: argparse.Namespace, model: str, packing: bool) -> dict[str, dict[int, Any]]:
    """{runner: {repeat: result or failure}}: the runners in alternating order (A B C, C B A, …)."""
    runners = [r for r in args.runners if not (packing and r in ("trl", "trl_gc"))]
    results: dict[str, dict[int, Any]] = {r: {} for r in runners}
    for repeat in range(args.repeats):
        for runner in runners if repeat % 2 == 0 else runners[::-1]:
            failed = any(isinstance(r, str) for r in results[runner].values())
            if failed or (runner == "trl" and repeat > 0):  # TRL defaults (bf16 on CPU) are slow: once
                continue
            results[runner][repeat] = spawn(spec_for(args, model, runner, packing, False), args.timeout)
    return results


def print_rows(model: str, packing: bool, results: dict[str, dict[int, Any]], trl_defaults: Any) -> None:
    def ok(runner: str) -> dict[int, dict[str, Any]]:
        return {i: r for i, r in results.get(runner, {}).items() if isinstance(r, dict)}

    def ratios(runner: str, other: str) -> list[float]:
        mine = ok(runner)
        if other == "trl" and isinstance(trl_defaults, dict):  # one run: every repeat against it
            return [r["tokens_per_s"] / trl_defaults["tokens_per_s"] for r in mine.values()]
        theirs = ok(other)
        return [mine[i]["tokens_per_s"] / theirs[i]["tokens_per_s"] for i in mine if i in theirs]

    for runner, runs in results.items():
        name = f"| {model} | {'on' if packing else 'off'} | {LABELS[runner]} |"
        good = list(ok(runner).values())
        if not good:
            reason = next((r for r in runs.values() if isinstance(r, str)), "not run")
            print(f"{name} failed: {reason} |||||||||||")
            continue

        def med(key: str, good: list[dict[str, Any]] = good) -> float | None:
            values = [r[key] for r in good if r.get(key) is not None]
            return statistics.median(values) if values else None

        cells = [ratio_cell(ratios(runner, o)) if runner != o else "1" for o in ("hand", "trl", "trl_fp32")]
        speed = f"{med('s_per_step'):.3f} | {med('tokens_per_s'):.0f}"
        shares = f"{100 * med('data_share'):.1f}% | {100 * med('efficiency'):.1f}%"
        memory = f"{med('base_mb'):.0f} | {med('peak_mb'):.0f} | {fmt(med('mfu'), '.1%')}"
        print(
            f"{name} {len(good)} | {speed} | {' | '.join(cells)} | {shares} | {memory} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=["tiny", "demo"], choices=["tiny", "demo"])
    parser.add_argument("--runners", nargs="+", default=RUNNERS, choices=RUNNERS)
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=6, help="runs of every runner, interleaved")
    parser.add_argument(
        "--trl-defaults-steps", type=int, default=1, help="timed steps of the slow TRL defaults"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="examples per step")
    parser.add_argument("--tiny-max-length", type=int, default=1024, help="tokens (bytes) per example, tiny")
    parser.add_argument("--demo-max-length", type=int, default=512, help="tokens per example, demo model")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument(
        "--lora-dropout", type=float, default=0.0, help="LoRA dropout of every runner (itune's default: 0.05)"
    )
    parser.add_argument("--threads", type=int, default=torch_threads())
    parser.add_argument("--data", type=Path, default=ALPACA if ALPACA.exists() else None)
    parser.add_argument(
        "--synthetic", action="store_true", help="rows of exactly max-length random tokens (no data needed)"
    )
    parser.add_argument(
        "--packing", choices=["both", "off", "on"], default="both", help="padded, packed or both"
    )
    parser.add_argument("--profile", action="store_true", help="print the top costs of an itune step")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per runner")
    parser.add_argument("--efficiency-only", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    if args.data is None and (args.efficiency_only or not args.synthetic):
        raise SystemExit(
            "no Alpaca data: pass --data <alpaca-format .json> (../shared/data/alpaca_5000.json) "
            "or --synthetic"
        )

    if not args.efficiency_only:
        memory = "GPU allocated" if _cuda() else "RSS"
        print(
            f"| model | packing | runner | runs | s/step | real tok/s | x hand | x trl defaults | x trl fp32 "
            f"| data share | real/row tokens | base MB ({memory}) | peak MB ({memory}) | MFU |"
        )
        print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for model in args.models:
            trl_defaults: dict[str, Any] | str = "not run"
            for packing in packings(args):
                results = run_interleaved(args, model, packing)
                trl_defaults = results.get("trl", {}).get(0, trl_defaults)  # padded: what TRL does by default
                print_rows(model, packing, results, trl_defaults)
        print(
            f"\n{args.repeats} interleaved repeats of {args.warmup} + {args.steps} steps. x hand / x trl: "
            "real tokens/s over that runner's in the same repeat\n(same model, same packing; trl defaults: "
            "its one padded run), median [95% interval over repeats, from order\nstatistics; lower coverage "
            "in parentheses]. TRL's SFTConfig defaults bf16=True (CPU bf16 autocast) and\n"
            "gradient_checkpointing=True (a second forward in the backward pass); `trl fp32` sets both off.\n"
            "MFU = tok/s x FLOPs/token / peak, FLOPs/token = 4N (LoRA) or 6N (full) + 12*L*d*s_ctx; "
            "n/a on CPU.\n"
            "peak MB: from the first training step to the last."
        )
        if args.profile:
            for model in args.models:
                for packing in packings(args):
                    for runner in [r for r in ("itune", "hand") if r in args.runners]:
                        result = spawn(spec_for(args, model, runner, packing, True), args.timeout)
                        title = f"{LABELS[runner]}, {model}, packing {'on' if packing else 'off'}"
                        print(f"\n## profile: {title}, {args.steps} steps (times are totals over them)")
                        print(result["profile"] if isinstance(result, dict) else f"failed: {result}")
    if args.data is None:
        return
    print(f"\nPacking efficiency (real / row tokens), {args.data.name}, demo tokenizer, 1,024-token budget:")
    for label, value in alpaca_efficiency(args.data):
        print(f"  {label:<58} {100 * value:.1f}%")


def packings(args: argparse.Namespace) -> list[bool]:
    return {"both": [False, True], "off": [False], "on": [True]}[args.packing]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def torch_threads() -> int:
    """1 on a shared 2-core machine (2 threads stall on a busy core); all cores elsewhere."""
    cores = len(os.sched_getaffinity(0))
    return 1 if cores <= 2 else cores


if __name__ == "__main__":
    main()
