"""Run eval suites on a model, with an on-disk cache of base-model results."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from itune import __version__
from itune.data.templates import Template
from itune.eval.distributed import rank_and_world, run_shared
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

    Under several processes (DDP) every rank must call this: each suite runs once, on one rank, with that
    rank's local `model`, and every rank gets all the results (itune.eval.distributed); rank 0 writes the
    cache files. The results are those of one process.
    """

    def task(name: str, suite: Suite) -> Callable[[], tuple[dict[str, Any], bool]]:
        path = cache_dir / f"{cache_keys[name]}.json" if cache_dir and cache_keys else None

        def run() -> tuple[dict[str, Any], bool]:
            if path is not None and path.is_file():
                log.info("eval suite %s: cached base results %s", name, path.name[:12])
                return json.loads(path.read_text(encoding="utf-8")), True
            log.info("eval suite %s", name)
            return _run_suite(suite, model, tokenizer, template), False

        return run

    results = run_shared({name: task(name, suite) for name, suite in suites.items()}, "eval suite")
    scores = SuiteScores({}, {}, {})
    for name, (result, cached) in results.items():
        if cache_dir and cache_keys and not cached and rank_and_world()[0] == 0:
            path = cache_dir / f"{cache_keys[name]}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
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
