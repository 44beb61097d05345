"""Presets built on a shared root-level file compose to the same values they had when each spelt out its
keys: the hub model presets (conf/_base_hub_model.yaml) and the demo's disclaimer suite
(conf/_eval_disclaimer.yaml, in eval=demo and callbacks=periodic_eval)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

HUB_MODEL = {  # the keys every hub preset shares, as composed before the shared base existed
    "lm": {
        "_target_": "itune.model.load_causal_lm",
        "name_or_path": "${..name}",
        "revision": None,
        "dtype": "float32",
        "attn_implementation": "sdpa",
        "trust_remote_code": False,
    },
    "tokenizer": {
        "_target_": "itune.model.load_tokenizer",
        "name_or_path": "${..name}",
        "revision": "${..lm.revision}",
        "trust_remote_code": "${..lm.trust_remote_code}",
    },
    "gradient_checkpointing": False,
    "compile": False,
    "liger_kernel": False,
    "chunked_loss": True,
}
HUB_PRESETS = {  # each preset's own keys
    "smollm2_135m": {"name": "HuggingFaceTB/SmolLM2-135M"},
    "qwen2_5_0_5b": {"name": "Qwen/Qwen2.5-0.5B"},
    "llama3_2_1b": {"name": "meta-llama/Llama-3.2-1B", "gradient_checkpointing": True},
    "llama3_1_8b": {
        "name": "meta-llama/Llama-3.1-8B",
        "gradient_checkpointing": True,
        "lm.dtype": "bfloat16",
    },
}
DISCLAIMER = {  # the demo's domain suite
    "_target_": "itune.eval.rules.RulesSuite",
    "prompts": "${itune_resource:demo/finance_heldout.jsonl}",
    "rules": {"ends_with_disclaimer": {"ends_with": "This is not financial advice."}},
    "max_new_tokens": 96,
    "kind": "domain",
}


def compose_train(*overrides: str) -> dict:
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        cfg = compose("train", overrides=["run_dir=/tmp/unused", *overrides])
    return OmegaConf.to_container(cfg, resolve=False)


def expected_model(preset: str) -> dict:
    node = OmegaConf.create({"name": None, **HUB_MODEL})
    for key, value in HUB_PRESETS[preset].items():
        OmegaConf.update(node, key, value)
    return OmegaConf.to_container(node)


@pytest.mark.parametrize("preset", list(HUB_PRESETS))
def test_hub_model_presets_compose_as_before(preset):
    model = compose_train(f"model={preset}")["model"]
    assert model == expected_model(preset)
    assert list(model) == ["name", *HUB_MODEL]  # the keys in the order they were written before
    resolved = OmegaConf.create({"model": model})
    assert resolved.model.lm.name_or_path == resolved.model.tokenizer.name_or_path == model["name"]


def test_hub_model_presets_can_still_be_overridden():
    model = compose_train("model=qwen2_5_0_5b", "model.lm.dtype=bfloat16", "model.name=/models/mine")["model"]
    assert model["lm"]["dtype"] == "bfloat16" and model["name"] == "/models/mine"


@pytest.mark.parametrize("eval_preset", ["demo", "demo_full"])
def test_the_demo_eval_disclaimer_suite_composes_as_before(eval_preset):
    suite = compose_train(f"eval={eval_preset}")["eval"]["suites"]["disclaimer"]
    assert suite == DISCLAIMER | {"limit": None, "batch_size": 8}


@pytest.mark.parametrize("callbacks", ["periodic_eval", "optuna_pruning"])
def test_the_periodic_eval_suite_composes_as_before(callbacks):
    periodic = compose_train(f"callbacks={callbacks}")["callbacks"]["periodic_eval"]
    assert periodic["_target_"] == "itune.eval.callback.PeriodicEval" and periodic["every_n_validations"] == 1
    assert periodic["suites"] == {"disclaimer": DISCLAIMER | {"limit": 8}}
