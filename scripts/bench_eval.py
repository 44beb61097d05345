"""Benchmark: batched vs one-at-a-time multiple-choice scoring and generation on the demo model.

Prints examples/s of log-likelihood scoring (HellaSwag rows, 4 choices each) and generated tokens/s of
greedy generation, each batched and one item at a time on the same items, and the speed-up ratio.

    python scripts/bench_eval.py [--hellaswag ../shared/data/hellaswag_val.jsonl] [--items 32]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from itune.data.templates import TokenizerTemplate
from itune.demo_model import load_demo_model, load_demo_tokenizer
from itune.eval.multiple_choice import MultipleChoiceSuite
from itune.inference.generation import generate
from itune.resources import resource_path

ROOT = Path(__file__).resolve().parents[1]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hellaswag", default=str(ROOT.parent / "shared/data/hellaswag_val.jsonl"))
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    model, tokenizer = load_demo_model(), load_demo_tokenizer()
    template = TokenizerTemplate(tokenizer)

    suite = MultipleChoiceSuite(args.hellaswag, "hellaswag", limit=args.items, batch_size=args.batch_size)
    (batched, _), t_batched = timed(lambda: suite.run(model, tokenizer, template))
    suite.batch_size = 1
    (single, _), t_single = timed(lambda: suite.run(model, tokenizer, template))
    assert abs(batched["acc"] - single["acc"]) < 1e-9, (batched, single)

    prompts = [
        json.loads(x)["prompt"]
        for x in Path(resource_path("demo/finance_heldout.jsonl")).read_text().splitlines()
    ]
    convs = [[{"role": "user", "content": p}] for p in prompts[: min(len(prompts), args.items)]]

    def gen(bs: int) -> int:
        answers = generate(model, tokenizer, template, convs, args.max_new_tokens, batch_size=bs)
        return sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)

    tok_b, g_batched = timed(lambda: gen(8))
    tok_s, g_single = timed(lambda: gen(1))

    n = len(suite.items)
    rows = [
        ("multiple choice (examples/s)", n / t_batched, n / t_single),
        ("generation (new tokens/s)", tok_b / g_batched, tok_s / g_single),
    ]
    threads = torch.get_num_threads()
    print(f"demo model SmolLM2-135M, CPU threads={threads}, {n} HellaSwag rows, {len(convs)} prompts")
    print(f"{'task':32} {'batched':>10} {'one-at-a-time':>14} {'speed-up':>9}")
    for name, b, s in rows:
        print(f"{name:32} {b:10.2f} {s:14.2f} {b / s:8.2f}x")
    print(f"accuracy batched={batched['acc']:.3f} one-at-a-time={single['acc']:.3f} (must match)")


if __name__ == "__main__":
    main()
