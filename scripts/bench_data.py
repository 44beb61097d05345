"""Benchmark the data preparation against the bare batched tokenizer on the same rows.

    python scripts/bench_data.py [--data ../shared/data/alpaca_5000.json] [--tokenizer auto|byte|demo]
                                 [--only toxicity|curate]

Prints rows/s of:
  tokenizer   the tokenizer alone, one batched call over each row's text (instruction, input, output)
  prepare     load → format → curate (conf/curate/<curate>.yaml) → template/tokenize, plus the mix,
              manifest and audit: InstructDataModule.setup() with an empty datasets cache
  cached      the same setup a second time: datasets finds every map step in its cache
  toxicity    the toxicity filter alone (conf/curate/default.yaml settings) on the Alpaca-formatted rows, in
              batches of 500 as in curate; its one-off model load is printed apart
  filters     with `--only curate`: each other row or set filter of conf/curate/<curate>.yaml alone on the
              same rows, in batches of 1000 as in curate (PII, MinHash near-dedup, ...)
and the ratios prepare/tokenizer, cached/tokenizer and toxicity/tokenizer (time per row; 1.0 = as fast as
the tokenizer). `--only toxicity` skips the two setups; `--only curate` times the other filters instead.
The demo SmolLM2 tokenizer is used when it is cached (`python -m itune.demo_model`), else the byte one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "alpaca_5000.json"))
    parser.add_argument("--tokenizer", choices=["auto", "byte", "demo"], default="auto")
    parser.add_argument("--curate", default="default", help="option of conf/curate/ (default, strict, none)")
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--only", choices=["toxicity", "curate"], default=None, help="time only this part")
    args = parser.parse_args()
    if not Path(args.data).is_file():
        sys.exit(f"{args.data} not found (pass --data)")
    cache = tempfile.mkdtemp(prefix="itune-bench-")
    os.environ["HF_DATASETS_CACHE"] = cache  # cold cache for the first run (before datasets is imported)

    import datasets
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from itune.data.datamodule import InstructDataModule
    from itune.model import byte_level_tokenizer

    datasets.disable_progress_bars()
    tokenizer, name = byte_level_tokenizer(), "byte-level"
    if args.tokenizer in ("auto", "demo"):
        from transformers import AutoTokenizer

        from itune.demo_model import demo_model_dir

        try:
            tokenizer = AutoTokenizer.from_pretrained(demo_model_dir(fetch=False))
            name = "SmolLM2-135M (demo)"
        except FileNotFoundError:
            if args.tokenizer == "demo":
                raise
    template = instantiate(OmegaConf.load(ROOT / "conf" / "template" / "chatml.yaml"), tokenizer=tokenizer)
    curate_cfg = OmegaConf.load(ROOT / "conf" / "curate" / f"{args.curate}.yaml")
    if "defaults" in curate_cfg:  # strict builds on default
        curate_cfg = OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "curate" / "default.yaml"), curate_cfg)
        curate_cfg.pop("defaults")

    rows = json.loads(Path(args.data).read_text(encoding="utf-8"))
    texts = ["\n\n".join(filter(None, (r.get("instruction"), r.get("input"), r.get("output")))) for r in rows]
    t0 = time.perf_counter()
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    bare = time.perf_counter() - t0
    n_tokens = sum(map(len, ids))

    def prepare() -> tuple[float, InstructDataModule]:
        filters = {k: instantiate(v) for k, v in (curate_cfg.filters or {}).items()}
        t = time.perf_counter()
        dm = InstructDataModule(
            {"alpaca": {"path": args.data, "format": "alpaca"}},
            tokenizer,
            template,
            curate=filters,
            on_bad_row="skip",
            max_length=args.max_length,
            val_fraction=0.0,
        )
        dm.setup("fit")
        return time.perf_counter() - t, dm

    n = len(rows)
    print(f"tokenizer: {name}; {n} rows, {n_tokens} tokens (bare); curate={args.curate}")
    print(f"  bare batched tokenizer   {bare:7.3f} s  {n / bare:9.0f} rows/s")
    if args.only == "curate":
        for label, seconds in bench_filters(rows, curate_cfg.filters):
            print(f"  {label:<24} {seconds:7.3f} s  {n / seconds:9.0f} rows/s  ratio {seconds / bare:6.2f}x")
        return
    load, tox, flagged = bench_toxicity(rows, curate_cfg.filters.get("toxicity"))
    print(f"  toxicity filter alone    {tox:7.3f} s  {n / tox:9.0f} rows/s  ratio {tox / bare:6.2f}x", end="")
    print(f"  ({flagged} at or over its threshold; model load {load:.2f} s once per process)")
    if args.only == "toxicity":
        return
    cold, dm = prepare()
    warm, _ = prepare()
    print(f"  prepare (cold cache)     {cold:7.3f} s  {n / cold:9.0f} rows/s  ratio {cold / bare:6.2f}x")
    print(f"  prepare (cached)         {warm:7.3f} s  {n / warm:9.0f} rows/s  ratio {warm / bare:6.2f}x")
    print(f"  rows in mixture {len(dm.train_set)}; dropped/redacted per step:")
    for st in dm.audit["steps"]:
        if any(st["totals"].values()):
            print(f"    {st['name']:<14} " + ", ".join(f"{k} {v}" for k, v in st["totals"].items() if v))
    shutil.rmtree(cache, ignore_errors=True)


def conversations(rows: list[dict]) -> list[list[dict[str, str]]]:
    """The Alpaca rows as messages; a row the format rejects (e.g. an empty output) keeps its instruction,
    so that every row is timed."""
    from itune.data.formats import RowError, alpaca

    out = []
    for row in rows:
        try:
            out.append(alpaca(row))
        except RowError:
            out.append([{"role": "user", "content": row.get("instruction", "")}])
    return out


def bench_filters(rows: list[dict], nodes: Any) -> list[tuple[str, float]]:
    """(name, s) of each row and set filter but toxicity, alone on the Alpaca rows in batches of 1000."""
    from hydra.utils import instantiate

    from itune.data.curate import build_filters, curate_batch

    convs, out = conversations(rows), []
    for name, node in (nodes or {}).items():
        if name == "toxicity" or node is None:
            continue
        filters = build_filters({name: instantiate(node)})
        if filters[0].stage == "tokens":
            continue
        t = time.perf_counter()
        for i in range(0, len(convs), 1000):
            curate_batch({"messages": convs[i : i + 1000]}, filters)
        out.append((f"filter {name}", time.perf_counter() - t))
    return out


def bench_toxicity(rows: list[dict], node: Any) -> tuple[float, float, int]:
    """(model load s, filter s, rows at or over the threshold) of the toxicity filter on Alpaca rows."""
    from hydra.utils import instantiate

    from itune.data.toxicity import Toxicity, toxicity_probs

    f = instantiate(node) if node is not None else Toxicity()
    convs = conversations(rows)
    t = time.perf_counter()
    toxicity_probs(["warm up"])  # loads the bundled vectoriser and model
    load = time.perf_counter() - t
    t = time.perf_counter()
    verdicts = [v for i in range(0, len(rows), 500) for v in f.verdicts(convs[i : i + 500])]
    return load, time.perf_counter() - t, sum(v.action != "keep" for v in verdicts)


if __name__ == "__main__":
    main()
