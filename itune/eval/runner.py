"""Run eval suites on a model, with an on-disk cache of base-model results."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from itune import __version__
from itune.data.templates import Template
from itune.eval.items import ItemScores

log = logging.getLogger(__name__)
Samples = list[dict[str, Any]]
CACHE_SCHEMA = 2  # cached base results hold item scores since schema 2


class Suite(Protocol):
    """An eval suite: `run` returns metrics and samples; suites that can also give per-item scores have
    `score`, which returns metrics, samples and item scores (metrics of a suite without it get no CI)."""

    kind: str

    def run(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template
    ) -> tuple[dict[str, float], Samples]: ...


class ScoredSuite:
    """Base of the built-in suites: subclasses implement `score`; `run` is `score` without the items."""

    kind: str

    def score(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template
    ) -> tuple[dict[str, float], Samples, ItemScores]:
        raise NotImplementedError

    def run(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template
    ) -> tuple[dict[str, float], Samples]:
        """Aggregate metrics and samples."""
        metrics, samples, _ = self.score(model, tokenizer, template)
        return metrics, samples


class SuiteScores(NamedTuple):
    """What `score_suites` returns: metrics `eval/<suite>/<metric>`, samples and item scores per suite."""

    metrics: dict[str, float]
    samples: dict[str, Samples]
    items: dict[str, ItemScores | None]


def metric_kinds(suites: dict[str, Suite], metrics: dict[str, float]) -> dict[str, str]:
    """metric → `domain`/`general`, from the kind of the suite that produced it."""
    kinds = {}
    for key in metrics:
        parts = key.split("/")
        if parts[0] == "eval" and parts[1] in suites:
            kinds[key] = getattr(suites[parts[1]], "kind", "general")
    return kinds


def _file_stamps(node: Any) -> list[Any]:
    """(path, size, mtime) of every existing file named in a config node, so edited files miss the cache."""
    if isinstance(node, dict):
        return [s for v in node.values() for s in _file_stamps(v)]
    if isinstance(node, list):
        return [s for v in node for s in _file_stamps(v)]
    if isinstance(node, str) and os.path.isfile(node):
        st = os.stat(node)
        return [(node, st.st_size, st.st_mtime_ns)]
    return []


def cache_key(**parts: Any) -> str:
    """sha256 of the parts (configs as plain containers) and of the files they name."""
    payload = json.dumps({"parts": parts, "files": _file_stamps(parts)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def base_cache_keys(
    model_node: dict[str, Any], template: Template, suite_nodes: dict[str, Any]
) -> dict[str, str]:
    """Cache key per suite for base-model results: base model config + template + suite config + version."""
    return {
        name: cache_key(
            model=model_node,
            template=template.fingerprint,
            suite=node,
            itune=__version__,
            schema=CACHE_SCHEMA,
        )
        for name, node in suite_nodes.items()
    }


def _run_suite(
    suite: Suite, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template
) -> dict[str, Any]:
    """One suite's result as a JSON-ready dict {metrics, samples, items} (items None if it has none)."""
    if hasattr(suite, "score"):
        metrics, samples, items = suite.score(model, tokenizer, template)
    else:
        (metrics, samples), items = suite.run(model, tokenizer, template), None
    return {"metrics": {k: float(v) for k, v in metrics.items()}, "samples": samples, "items": items}


def score_suites(
    suites: dict[str, Suite],
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    cache_dir: Path | None = None,
    cache_keys: dict[str, str] | None = None,
) -> SuiteScores:
    """Metrics `eval/<suite>/<metric>`, samples and item scores per suite.

    With `cache_dir` and a key per suite, results (items included) are read from `<cache_dir>/<key>.json`
    when present and written there otherwise (used for the base model, so a sweep evaluates it once).
    """
    scores = SuiteScores({}, {}, {})
    for name, suite in suites.items():
        path = cache_dir / f"{cache_keys[name]}.json" if cache_dir and cache_keys else None
        if path is not None and path.is_file():
            result = json.loads(path.read_text(encoding="utf-8"))
            log.info("eval suite %s: cached base results %s", name, path.name[:12])
        else:
            log.info("eval suite %s", name)
            result = _run_suite(suite, model, tokenizer, template)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(result), encoding="utf-8")
                tmp.replace(path)
        scores.metrics.update({f"eval/{name}/{k}": float(v) for k, v in result["metrics"].items()})
        scores.samples[name], scores.items[name] = result["samples"], result.get("items")
    return scores


def run_suites(
    suites: dict[str, Suite],
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    cache_dir: Path | None = None,
    cache_keys: dict[str, str] | None = None,
) -> tuple[dict[str, float], dict[str, Samples]]:
    """Metrics and samples per suite (`score_suites` without the item scores)."""
    scores = score_suites(suites, model, tokenizer, template, cache_dir, cache_keys)
    return scores.metrics, scores.samples
