"""A tiny trained LoRA run per template, trained once per test session (shared by the inference tests)."""

from __future__ import annotations

import json
from pathlib import Path

from hydra import compose, initialize_config_module

from itune.train import train

_RUNS: dict[str, Path] = {}
WORDS = ["red", "blue", "green", "gold", "pink", "gray"]


def tiny_run(base: Path, template: str = "chatml", *overrides: str) -> Path:
    """Train (once per session and template) a 6-step LoRA run of the tiny model; returns its run dir."""
    key = "|".join((template, *overrides))
    if key in _RUNS:
        return _RUNS[key]
    base.mkdir(parents=True, exist_ok=True)
    data = base / "alpaca.json"
    rows = [{"instruction": f"Repeat the word {w}.", "input": "", "output": f"{w} {w}"} for w in WORDS] * 4
    data.write_text(json.dumps(rows), encoding="utf-8")
    run_dir = base / f"run-{len(_RUNS)}-{template}"
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"run_dir={run_dir}",
                "model=tiny",
                f"template={template}",
                "logger=csv",
                "eval=none",
                "data=alpaca",
                f"data.sources.alpaca.path={data}",
                "data.val_fraction=0.25",
                "data.batch_size=4",
                "trainer.max_steps=6",
                "optimizer.lr=2e-2",
                "scheduler=constant",
                "scheduler.num_warmup_steps=0",
                *overrides,
            ],
        )
    train(cfg)
    _RUNS[key] = run_dir
    return run_dir
