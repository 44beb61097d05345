"""YAML defaults equal the Python defaults of their `_target_`s, or the difference is listed with its reason.

Every option of the groups below is composed; in each `_target_` node every key the YAML sets (not an
interpolation, not `???`, not a nested `_target_` node) is compared with the default of that parameter in
`inspect.signature(target)`. A new disagreement fails here; so does a listed one that went away (delete it).
Not compared: `trainer` and `logger` (Lightning's own classes: their YAML values are run settings, not
copies of a default) and `template` (each option defines a format; pinned by tests/test_golden.py).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest
from hydra.utils import get_method
from omegaconf import OmegaConf

from itune.config_schema import EvalSchema
from tests.conftest import CONF

GROUPS = ["data", "eval", "peft", "regularizer", "callbacks", "curate", "optimizer", "scheduler", "model"]
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
INSTANTIATE_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}

# Where the Python default is what should change (the YAML is the documented behaviour): these pass until
# the Python side is fixed, then fail as stale so the entry is deleted.
PYTHON_TO_CHANGE: dict[str, str] = {}

# Deliberate choices that differ from the target's default: "<group>=<option>: <path>" for one option,
# "<path>" alone for every option that has the node (a shared default or an inherited one).
INTENTIONAL = {
    # data=demo: a small two-source demo mix
    "data=demo: data.val_fraction": "10% held out so each small source has a usable val set",
    "data=demo: data.max_length": "its examples are short; 512 tokens keeps CPU steps fast",
    "data=demo: data.batch_size": "8 examples a step for a smoother loss on the tiny mix",
    # eval presets: per-suite generation budgets and sample sizes
    "eval.suites.disclaimer.rules": "the demo's domain rule (RulesSuite takes rules from the config)",
    "eval.suites.disclaimer.max_new_tokens": "an answer plus the disclaimer fits in 96 tokens",
    "eval.suites.general_rules.rules": "the demo's general rule (no disclaimer on general prompts)",
    "eval.suites.general_rules.max_new_tokens": "general answers are judged on their ending only",
    "eval.suites.general_rules.kind": "the general side of the forgetting report",
    "eval=demo_full: eval.suites.hellaswag.limit": "32 questions keep `make demo` short",
    "eval=demo_full: eval.suites.arc_easy.limit": "32 questions keep `make demo` short",
    "eval=demo_full: eval.suites.arc_challenge.limit": "32 questions keep `make demo` short",
    "eval=general: eval.suites.perplexity.limit": "100 items, like its other suites",
    "eval=demo_full: eval.suites.perplexity.limit": "32 items keep `make demo` short",
    "eval=demo_full: eval.suites.ifeval.limit": "10 prompts keep `make demo` short",
    "eval=demo_full: eval.suites.ifeval.max_new_tokens": "shorter answers for a short demo",
    # peft: LoRA settings for causal-LM instruction tuning (peft's defaults are generic)
    "peft.task_type": "CAUSAL_LM: peft wraps the model for generation and saves the right adapter config",
    "peft.lora_alpha": "alpha = 2r, the common LoRA recipe (peft: alpha = r)",
    "peft.lora_dropout": "a little dropout against overfitting small instruction sets",
    "peft.target_modules": "all linear layers (peft's default picks per-architecture attention only)",
    "peft=corda: peft.init_lora_weights": "the CorDA initialisation",
    "peft=corda: peft.corda_config.corda_method": "kpm: keep general knowledge (less forgetting)",
    "peft=dora: peft.use_dora": "DoRA is what this option turns on",
    # callbacks: checkpointing for exact resume; the periodic eval's demo suite and Optuna pruning
    "callbacks.checkpoint.save_last": "last.ckpt for ckpt_path=last / resume=<dir>",
    "callbacks.checkpoint.save_top_k": "no metric-ranked checkpoints: the run saves its adapter/model",
    "callbacks.checkpoint.every_n_train_steps": "a crash loses at most 20 steps",
    "callbacks=optuna_pruning: callbacks.periodic_eval.on_eval": "reports each periodic eval to Optuna",
    "callbacks.periodic_eval.suites.disclaimer.rules": "the demo's domain rule",
    "callbacks.periodic_eval.suites.disclaimer.limit": "8 prompts: cheap enough to run at every validation",
    "callbacks.periodic_eval.suites.disclaimer.max_new_tokens": "an answer plus the disclaimer fits in 96",
    "callbacks=optuna_pruning: callbacks.periodic_eval.on_eval.optuna.pruner.n_startup_trials": (
        "the sweeper's 4 random startup trials"
    ),
    # curate: the filters' settings are the presets' content
    "curate.filters.pii.kinds": "the kinds the default preset redacts, listed so a team can trim them",
    "curate=strict: curate.filters.pii.action": "drop rows with PII instead of redacting",
    "curate.filters.terms.terms": "the default blocked terms",
    "curate.filters.terms.files": "[]: no term files, the same as the default None",
    "curate=strict: curate.filters.terms.action": "drop instead of flag",
    "curate.filters.decontaminate.files": "[]: no eval files, the same as the default None",
    "curate=strict: curate.filters.near_dedup.threshold": "a lower similarity counts as a duplicate",
    "curate=strict: curate.filters.toxicity.action": "drop instead of flag",
    "curate=strict: curate.filters.length.min_tokens": "drop near-empty examples",
    # optimizer/model: fine-tuning settings, not the library's pre-training defaults
    "optimizer=adamw: optimizer.lr": "2e-4, a LoRA fine-tuning rate (torch: 1e-3)",
    "optimizer=adamw: optimizer.weight_decay": "no decay on LoRA weights (torch AdamW: 0.01)",
    "model=llama3_1_8b: model.lm.dtype": "bf16 weights so 8B fits a single GPU",
}


def target_nodes(node: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
    """Every `(path, node)` with a `_target_` under `node` (nested ones too)."""
    found = []
    if isinstance(node, list):
        for i, item in enumerate(node):
            found += target_nodes(item, f"{path}[{i}]")
    elif isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            found.append((path, node))
        for key, child in node.items():
            found += target_nodes(child, f"{path}.{key}")
    return found


def same(yaml_value: Any, default: Any) -> bool:
    """Equal as config values: a YAML list equals a tuple default, 4 equals 4.0, but 0 is not False."""
    if isinstance(default, tuple) and isinstance(yaml_value, list):
        return list(default) == yaml_value
    return isinstance(yaml_value, bool) == isinstance(default, bool) and yaml_value == default


def disagreements(cfg: Any, group: str) -> dict[str, tuple[Any, Any]]:
    """{node path.key: (YAML value, Python default)} for the group's `_target_` nodes."""
    container = OmegaConf.to_container(cfg, resolve=False)
    found = {}
    for path, node in target_nodes(container.get(group), group):
        params = inspect.signature(get_method(node["_target_"])).parameters
        for key, value in node.items():
            param = params.get(key)
            if key in INSTANTIATE_KEYS or param is None or param.default is inspect.Parameter.empty:
                continue
            if isinstance(value, str) and ("${" in value or value == "???"):
                continue  # an interpolation or a required value: nothing to compare
            if isinstance(value, dict) and "_target_" in value:
                continue  # a nested object: its own keys are compared
            if not same(value, param.default):
                found[f"{path}.{key}"] = (value, param.default)
    return found


@pytest.fixture(scope="module")
def all_disagreements() -> dict[str, dict[str, tuple[Any, Any]]]:
    from hydra import compose, initialize_config_module

    found: dict[str, dict[str, tuple[Any, Any]]] = {}
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        for group, option in OPTIONS:
            cfg = compose("train", overrides=["run_dir=unused", f"{group}={option}"])
            found[f"{group}={option}"] = disagreements(cfg, group)
    return found


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_yaml_defaults_equal_python_defaults(group, option, all_disagreements):
    unexplained = {
        key: f"YAML {yaml!r} != Python {py!r}"
        for key, (yaml, py) in all_disagreements[f"{group}={option}"].items()
        if not {key, f"{group}={option}: {key}"} & (set(INTENTIONAL) | set(PYTHON_TO_CHANGE))
    }
    assert not unexplained, f"make them agree, or list them in INTENTIONAL with the reason: {unexplained}"


def test_every_listed_difference_still_exists(all_disagreements):
    seen = {
        k for option, found in all_disagreements.items() for key in found for k in (key, f"{option}: {key}")
    }
    stale = sorted((set(INTENTIONAL) | set(PYTHON_TO_CHANGE)) - seen)
    assert not stale, f"these now agree (or are gone): delete them from the lists: {stale}"


def test_the_comparison_can_fail():
    node = {"_target_": "itune.regularizers.KLToBase", "weight": 0.5}
    assert disagreements(OmegaConf.create({"regularizer": node}), "regularizer") == {
        "regularizer.weight": (0.5, 0.05)
    }
    node["weight"] = 0.05
    assert disagreements(OmegaConf.create({"regularizer": node}), "regularizer") == {}
    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "nesterov": 0, "momentum": 0, "lr": "${x}"}
    assert disagreements(OmegaConf.create({"o": sgd}), "o") == {"o.nesterov": (0, False)}  # 0 is not False


def test_eval_schema_defaults_equal_base_eval():
    """EvalSchema's scalar defaults are conf/_base_eval.yaml's (the code reads these keys with .get)."""
    base = OmegaConf.load(CONF / "_base_eval.yaml")
    scalars = {f.name: f.default for f in dataclasses.fields(EvalSchema) if f.default is not None}
    assert scalars and {k: base[k] for k in scalars} == scalars
