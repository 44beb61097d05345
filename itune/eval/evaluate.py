"""run_eval(cfg): the eval suites on a run directory (tuned vs its base) or on a bare base model."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from itune.eval.forgetting import compare_runs, show_report, write_report
from itune.eval.items import write_items
from itune.eval.runner import base_cache_keys, score_suites
from itune.run_loading import load_model, run_config

log = logging.getLogger(__name__)
METRICS_FILE = "eval_metrics.json"


def run_eval(cfg: DictConfig) -> dict[str, float]:
    """Evaluate; with a run directory also its base model (cached like training's) and the forgetting report.

    Writes eval_metrics.json, samples.json, items_tuned.jsonl and (with a run directory)
    items_base.jsonl and forgetting.{json,md,png} into `cfg.run_dir`.
    """
    out = Path(cfg.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, template = load_model(cfg)
    suite_nodes = cfg.eval.get("suites") or {}
    if not suite_nodes:
        raise ValueError("no eval suites configured; pick eval=demo, general, ifeval or demo_full")
    suites = {name: instantiate(node) for name, node in suite_nodes.items()}
    metrics, samples, items = score_suites(suites, model, tokenizer, template)
    all_samples: dict[str, Any] = {"tuned": samples}
    all_items: dict[str, Any] = {"tuned": items}

    if cfg.get("run") and cfg.eval.get("on_base", True):
        run_cfg = run_config(cfg.run)
        cache_dir = Path(cfg.eval.cache_dir) if cfg.eval.get("cache_dir") else None
        keys = base_cache_keys(
            OmegaConf.to_container(run_cfg.model, resolve=True),
            template,
            OmegaConf.to_container(suite_nodes, resolve=True),
        )
        if hasattr(model, "disable_adapter"):  # LoRA: the base is the same model without its adapter
            context, base_model = model.disable_adapter(), model
        else:  # merged or fully fine-tuned weights: load the base model itself
            context, base_model = contextlib.nullcontext(), instantiate(run_cfg.model.lm).eval()
        with context:
            base, all_samples["base"], all_items["base"] = score_suites(
                suites, base_model, tokenizer, template, cache_dir, keys
            )
        report = compare_runs(base, metrics, suites, [], cfg.eval, all_items)
        metrics |= {f"base/{k}": v for k, v in base.items()} | report["summary"]
        write_report(out, report)
        show_report(report, all_samples, cfg.eval.get("show_samples", 3))
    write_items(out, all_items)
    (out / METRICS_FILE).write_text(json.dumps(dict(sorted(metrics.items())), indent=2) + "\n")
    (out / "samples.json").write_text(json.dumps(all_samples, indent=2, ensure_ascii=False) + "\n")
    log.info("eval results in %s", out)
    return metrics
