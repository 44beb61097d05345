"""train(cfg): compose the groups into objects, evaluate the base model, fit, evaluate, save the run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from itune import run_dir as rd
from itune.eval.runner import compare, run_suites
from itune.model import apply_peft, enable_gradient_checkpointing
from itune.module import InstructionTuner

log = logging.getLogger(__name__)


def _nodes(group: DictConfig | None) -> list[Any]:
    """Instantiate every node of a name → node group (loggers, callbacks)."""
    return [instantiate(node) for node in (group or {}).values() if node is not None]


def show_comparison(rows: dict[str, dict[str, float]], samples: dict[str, Any], n_samples: int) -> None:
    """Print base vs tuned metrics and a few tuned answers (rank 0)."""
    if not rows:
        return
    console = Console(stderr=True)
    table = Table(title="eval: base → tuned")
    for col in ("metric", "base", "tuned", "delta"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key, r in rows.items():
        table.add_row(key, f"{r['base']:.3f}", f"{r['tuned']:.3f}", f"{r['delta']:+.3f}")
    console.print(table)
    for suite, items in samples.get("tuned", {}).items():
        for item in items[:n_samples]:
            console.print(f"[bold]{suite}[/] Q: {item['prompt']}\n  A: {item['answer']}")


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Run one training job described by a composed `train.yaml` config.

    Returns:
        metrics (the content of metrics.json) and the built objects (trainer, module, datamodule,
        tokenizer, template) for callers and tests.
    """
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    tokenizer = instantiate(cfg.model.tokenizer)
    template = instantiate(cfg.template, tokenizer=tokenizer)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer, template=template)
    datamodule.setup("fit")  # bad data fails here, before the model is loaded

    model = instantiate(cfg.model.lm)
    if cfg.model.get("gradient_checkpointing"):
        enable_gradient_checkpointing(model)
    model = apply_peft(model, instantiate(cfg.peft) if cfg.get("peft") else None)
    suites = {name: instantiate(node) for name, node in (cfg.eval.get("suites") or {}).items()}

    base_metrics: dict[str, float] = {}
    samples: dict[str, Any] = {}
    if suites and cfg.eval.get("on_base", True):  # a fresh LoRA adapter is the identity: this is the base
        base_metrics, samples["base"] = run_suites(suites, model, tokenizer, template)

    module = InstructionTuner(
        model,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        source_names=datamodule.source_names,
    )
    trainer = instantiate(
        cfg.trainer, logger=_nodes(cfg.get("logger")) or False, callbacks=_nodes(cfg.callbacks)
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics: dict[str, float] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if datamodule.val_set is not None:  # final validation of the trained weights
        trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics |= {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics |= datamodule.stats | {"train/steps": trainer.global_step}
    tuned_metrics: dict[str, float] = {}
    if suites:
        tuned_metrics, samples["tuned"] = run_suites(suites, model, tokenizer, template)
    rows = compare(base_metrics, tuned_metrics)
    metrics |= tuned_metrics | {f"base/{k}": v for k, v in base_metrics.items()}
    metrics |= {f"delta/{k}": r["delta"] for k, r in rows.items()}
    for lg in trainer.loggers:
        evals = {k: v for k, v in metrics.items() if k.startswith(("eval/", "base/", "delta/"))}
        lg.log_metrics(evals, step=trainer.global_step)
        lg.save()

    if rank_zero_only.rank == 0:
        rd.save_config(run_dir, cfg)
        rd.save_template(run_dir, template)
        rd.save_metrics(run_dir, metrics)
        if samples:
            rd.save_samples(run_dir, samples)
        if cfg.get("save_model", True):
            rd.save_model(run_dir, model, tokenizer)
        show_comparison(rows, samples, cfg.eval.get("show_samples", 3))
        log.info("run directory: %s", run_dir)
    objects = {
        "trainer": trainer,
        "module": module,
        "datamodule": datamodule,
        "tokenizer": tokenizer,
        "template": template,
    }
    return metrics, objects
