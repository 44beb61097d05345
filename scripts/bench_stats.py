"""Benchmark: the cost of the paired statistics of the forgetting report relative to the eval time.

Scores log-likelihood suites (ARC-Easy and HellaSwag in lm-eval's plain format, Alpaca perplexity; the
cheapest suites per item, so the pessimistic case: generation suites take far longer per item) on a model
and on a perturbed copy of it, then times `compare_runs` (bootstrap CIs, McNemar/permutation p-values,
Holm, MDE, joint bootstrap of the summary). Prints eval seconds, statistics seconds and their ratio (goal:
< 1%), and the statistics' cost on synthetic suites of 1000 items.

    python scripts/bench_stats.py [--model demo|tiny] [--items 32] [--n-boot 2000] [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

from itune.data.templates import TokenizerTemplate
from itune.eval.forgetting import build_report, compare_runs
from itune.eval.items import item_scores, means
from itune.eval.multiple_choice import MultipleChoiceSuite
from itune.eval.perplexity import PerplexitySuite
from itune.eval.runner import score_suites
from itune.eval.stats import StatsConfig

ROOT = Path(__file__).resolve().parents[1]


def load(kind: str):
    """(model, tokenizer, template): the demo model (cached conversion) or a tiny random Llama."""
    if kind == "demo":
        from itune.demo_model import load_demo_model, load_demo_tokenizer

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["demo", "tiny"], default="demo")
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()
    data = Path(args.data_dir)
    if not (data / "arc_easy_test.jsonl").is_file():
        raise SystemExit(f"no benchmark files in {data}; pass --data-dir (see ../shared/data/MANIFEST.md)")

    model, tokenizer, template = load(args.model)
    suites = {
        "arc_easy": MultipleChoiceSuite(str(data / "arc_easy_test.jsonl"), "arc", limit=args.items),
        "hellaswag": MultipleChoiceSuite(str(data / "hellaswag_val.jsonl"), "hellaswag", limit=args.items),
        "perplexity": PerplexitySuite({"alpaca": {"path": str(data / "alpaca_5000.json")}}, limit=args.items),
    }
    tuned_model = perturbed(model)
    start = time.perf_counter()
    base = score_suites(suites, model, tokenizer, template)
    tuned = score_suites(suites, tuned_model, tokenizer, template)
    eval_s = time.perf_counter() - start

    eval_cfg = {"stats": {"n_boot": args.n_boot}}
    items = {"base": base.items, "tuned": tuned.items}
    start = time.perf_counter()
    report = compare_runs(base.metrics, tuned.metrics, suites, [], eval_cfg, items)
    stats_s = time.perf_counter() - start

    print(f"model={args.model} items/suite={args.items} metrics={len(report['rows'])} n_boot={args.n_boot}")
    print(f"eval (base + tuned): {eval_s:8.2f} s")
    print(
        f"statistics:          {stats_s:8.3f} s  = {100 * stats_s / eval_s:.2f}% of the eval time (goal < 1%)"
    )
    print(f"statistics, synthetic 10 metrics x 1000 items: {synthetic_cost(1000, 10, args.n_boot):.3f} s")
    for r in report["rows"]:
        print(
            f"  {r['metric']:32s} n={r['n']} improvement={r['improvement']:+.4f} "
            f"CI=[{r['ci_lo']:+.4f}, {r['ci_hi']:+.4f}] p={r['p']:.3g} MDE={r['mde']:.3f}"
        )


if __name__ == "__main__":
    main()
