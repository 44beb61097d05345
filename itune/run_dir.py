"""Everything a training run writes into its run directory (called on rank 0 only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from itune.data.templates import Template

TEMPLATE_FILE = "template.json"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
SAMPLES_FILE = "samples.json"


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_config(run_dir: Path, cfg: DictConfig) -> None:
    """The fully resolved config the run used."""
    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")


def save_template(run_dir: Path, template: Template) -> None:
    """Template text, special tokens, mask policy and fingerprint."""
    _write_json(run_dir / TEMPLATE_FILE, template.to_dict())


def save_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """Flat metrics with the same keys the loggers get."""
    _write_json(run_dir / METRICS_FILE, dict(sorted(metrics.items())))


def save_samples(run_dir: Path, samples: dict[str, Any]) -> None:
    """Generated answers of the eval suites, before and after training."""
    _write_json(run_dir / SAMPLES_FILE, samples)


def save_model(run_dir: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Path:
    """The adapter (`adapter/`, peft) or the full model (`model/`) as safetensors, with the tokenizer."""
    target = run_dir / ("adapter" if hasattr(model, "peft_config") else "model")
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target
