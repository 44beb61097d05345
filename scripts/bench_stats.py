"""Benchmark: the cost of the forgetting report's statistics and of the KL-to-base pass, relative to eval.

Statistics: scores log-likelihood suites (ARC-Easy and HellaSwag in lm-eval's plain format, Alpaca
perplexity; the cheapest suites per item, so the pessimistic case: generation suites take far longer per
item) on a model and on a perturbed copy of it, then times `compare_runs` (bootstrap CIs, McNemar/permutation
p-values, Holm, MDE, joint bootstrap of the summary). Prints eval seconds, statistics seconds and their ratio
(goal: < 1%), and the statistics' cost on synthetic suites of 1000 items. Skipped without ../shared/data.

KL: `trainer.validate` of the same LoRA module on the same validation set with `kl_base=off` and
`kl_base=adapter` (one more forward per batch, the adapter disabled), alternated off/adapter, adapter/off, …
to cancel drift; prints the median time ratio adapter/off and its spread (goal: the KL pass costs at most one
extra forward of the validation set, i.e. a ratio <= 2).

    python scripts/bench_stats.py [--part all|stats|kl] [--model tiny|demo] [--items 32] [--n-boot 2000]
        [--data-dir ../shared/data] [--kl-examples 32] [--kl-batch 8] [--kl-repeats 6]

`--model demo` is the cached SmolLM2 demo model (python -m itune.demo_model); skipped when not cached.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from itune.data.collate import PadCollator
from itune.data.templates import TokenizerTemplate
from itune.eval.forgetting import build_report, compare_runs
from itune.eval.items import item_scores, means
from itune.eval.multiple_choice import MultipleChoiceSuite
from itune.eval.perplexity import PerplexitySuite
from itune.eval.runner import score_suites
from itune.eval.stats import StatsConfig

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["general", "domain"]


def load(kind: str):
    """(model, tokenizer, template): the demo model (cached conversion) or a tiny random Llama."""
    if kind == "demo":
        from itune.demo_model import demo_model_dir, load_demo_model, load_demo_tokenizer

        try:
            demo_model_dir(fetch=False)
        except FileNotFoundError as e:
            print(f"skipped: {e}")
            raise SystemExit(0) from None  # exit status 0: nothing to measure here
        tokenizer = load_demo_tokenizer()
        return load_demo_model(), tokenizer, TokenizerTemplate(tokenizer)
    from itune.model import byte_level_tokenizer, tiny_llama

    tokenizer = byte_level_tokenizer()  # carries a ChatML chat template
    return tiny_llama(), tokenizer, TokenizerTemplate(tokenizer)


def perturbed(model: torch.nn.Module, scale: float = 0.02) -> torch.nn.Module:
    """A copy of the model with Gaussian noise (relative `scale`) on every weight: a 'tuned' model."""
    other = copy.deepcopy(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * p.std().nan_to_num() * scale)
    return other


def synthetic_cost(n_items: int, n_metrics: int, n_boot: int) -> float:
    """Seconds of `build_report` on n_metrics binary metrics of n_items each (one suite per metric)."""
    rng = np.random.default_rng(0)
    items: dict[str, dict] = {"base": {}, "tuned": {}}
    for m in range(n_metrics):
        base = (rng.random(n_items) < 0.5).astype(int)
        tuned = np.where(rng.random(n_items) < 0.1, 1 - base, base)
        for model, values in (("base", base), ("tuned", tuned)):
            rows = [{"id": f"{m}-{i}", "acc": int(v)} for i, v in enumerate(values)]
            items[model][f"s{m}"] = item_scores(means(["acc"]), rows)
    base = {f"eval/s{m}/acc": 0.5 for m in range(n_metrics)}
    start = time.perf_counter()
    build_report(base, dict(base), {}, items=items, stats=StatsConfig(n_boot=n_boot))
    return time.perf_counter() - start


def bench_statistics(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    template: TokenizerTemplate,
    items: int,
    n_boot: int,
    data: Path,
) -> None:
    """Eval (base + perturbed) seconds against `compare_runs` seconds; printed."""
    if not (data / "arc_easy_test.jsonl").is_file():
        print(f"statistics: skipped, no benchmark files in {data} (pass --data-dir; see ../shared/data)")
        return
    suites = {
        "arc_easy": MultipleChoiceSuite(str(data / "arc_easy_test.jsonl"), "arc", limit=items),
        "hellaswag": MultipleChoiceSuite(str(data / "hellaswag_val.jsonl"), "hellaswag", limit=items),
        "perplexity": PerplexitySuite({"alpaca": {"path": str(data / "alpaca_5000.json")}}, limit=items),
    }
    tuned_model = perturbed(model)
    start = time.perf_counter()
    base = score_suites(suites, model, tokenizer, template)
    tuned = score_suites(suites, tuned_model, tokenizer, template)
    eval_s = time.perf_counter() - start

    eval_cfg = {"stats": {"n_boot": n_boot}}
    start = time.perf_counter()
    report = compare_runs(
        base.metrics, tuned.metrics, suites, [], eval_cfg, {"base": base.items, "tuned": tuned.items}
    )
    stats_s = time.perf_counter() - start

    print(f"items/suite={items} metrics={len(report['rows'])} n_boot={n_boot}")
    print(f"eval (base + tuned): {eval_s:8.2f} s")
    print(
        f"statistics:          {stats_s:8.3f} s  = {100 * stats_s / eval_s:.2f}% of the eval time (goal < 1%)"
    )
    print(f"statistics, synthetic 10 metrics x 1000 items: {synthetic_cost(1000, 10, n_boot):.3f} s")
    for r in report["rows"]:
        print(
            f"  {r['metric']:32s} n={r['n']} improvement={r['improvement']:+.4f} "
            f"CI=[{r['ci_lo']:+.4f}, {r['ci_hi']:+.4f}] p={r['p']:.3g} MDE={r['mde']:.3f}"
        )


def val_loader(
    tokenizer: PreTrainedTokenizerBase, template: TokenizerTemplate, n: int, batch_size: int
) -> DataLoader:
    """`n` encoded chats of varied length (3 to 7 answer sentences), alternating the two sources, padded."""
    sentence = "The answer follows the team's format and ends with the disclaimer. "
    chats = [
        [
            {"role": "user", "content": f"Question {i}: describe item {i} briefly."},
            {"role": "assistant", "content": sentence * (3 + i % 5)},
        ]
        for i in range(n)
    ]
    examples = [template.encode(c) | {"source": i % len(SOURCES)} for i, c in enumerate(chats)]
    return DataLoader(examples, batch_size=batch_size, collate_fn=PadCollator(tokenizer.pad_token_id))


def timed_validate(module: L.LightningModule, loader: DataLoader) -> float:
    """Seconds of one `trainer.validate` of the module over the loader (a fresh, quiet trainer)."""
    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.validate(module, dataloaders=loader, verbose=False)
    return time.perf_counter() - start


def bench_kl(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    template: TokenizerTemplate,
    n: int,
    batch_size: int,
    repeats: int,
) -> None:
    """Validation time with kl_base=adapter over kl_base=off on the same LoRA model and data; printed."""
    from peft import LoraConfig

    from itune.model import apply_peft
    from itune.module import InstructionTuner

    lora = apply_peft(model, LoraConfig(task_type="CAUSAL_LM", r=8, target_modules="all-linear"))
    loader = val_loader(tokenizer, template, n, batch_size)
    optimizer = partial(torch.optim.AdamW, lr=1e-4)  # never stepped: validation only
    modules = {
        m: InstructionTuner(lora, optimizer, source_names=SOURCES, kl_base=m) for m in ("off", "adapter")
    }
    for module in modules.values():
        timed_validate(module, loader)  # warm-up: first-call costs out of the measurement
    times: dict[str, list[float]] = {m: [] for m in modules}
    for r in range(repeats):
        for mode in ("off", "adapter") if r % 2 == 0 else ("adapter", "off"):
            times[mode].append(timed_validate(modules[mode], loader))
    ratios = [a / o for a, o in zip(times["adapter"], times["off"], strict=True)]
    tokens = sum(len(e["input_ids"]) for e in loader.dataset)
    median = statistics.median(ratios)
    print(f"KL pass: {n} examples ({tokens} tokens), batch {batch_size}, {repeats} alternated pairs")
    print(f"validate, kl_base=off:     median {statistics.median(times['off']):.3f} s")
    print(f"validate, kl_base=adapter: median {statistics.median(times['adapter']):.3f} s")
    print(
        f"ratio adapter/off: median {median:.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}): the KL pass "
        f"costs {median - 1:.2f} validation forwards (goal <= 1)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "stats", "kl"], default="all")
    parser.add_argument("--model", choices=["demo", "tiny"], default="tiny")
    parser.add_argument("--items", type=int, default=32, help="items per suite (statistics)")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--kl-examples", type=int, default=32, help="validation examples (KL)")
    parser.add_argument("--kl-batch", type=int, default=8)
    parser.add_argument("--kl-repeats", type=int, default=6, help="off/adapter pairs (KL)")
    args = parser.parse_args()

    model, tokenizer, template = load(args.model)
    print(f"model={args.model} torch threads={torch.get_num_threads()}")
    if args.part in ("all", "stats"):
        bench_statistics(model, tokenizer, template, args.items, args.n_boot, Path(args.data_dir))
    if args.part in ("all", "kl"):  # last: LoRA is injected into the model in place
        bench_kl(model, tokenizer, template, args.kl_examples, args.kl_batch, args.kl_repeats)


if __name__ == "__main__":
    main()
