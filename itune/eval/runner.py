"""Run the configured eval suites on a model and compare base against tuned."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from itune.data.templates import Template

log = logging.getLogger(__name__)


class Suite(Protocol):
    def run(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template
    ) -> tuple[dict[str, float], list[dict[str, str]]]: ...


def run_suites(
    suites: dict[str, Suite], model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template
) -> tuple[dict[str, float], dict[str, list[dict[str, str]]]]:
    """Metrics `eval/<suite>/<metric>` and samples per suite."""
    metrics: dict[str, float] = {}
    samples: dict[str, list[dict[str, str]]] = {}
    for name, suite in suites.items():
        log.info("eval suite %s", name)
        values, samples[name] = suite.run(model, tokenizer, template)
        metrics |= {f"eval/{name}/{k}": float(v) for k, v in values.items()}
    return metrics, samples


def compare(base: dict[str, float], tuned: dict[str, float]) -> dict[str, dict[str, Any]]:
    """{metric: {base, tuned, delta}} for every metric measured on both."""
    return {k: {"base": base[k], "tuned": tuned[k], "delta": tuned[k] - base[k]} for k in tuned if k in base}
