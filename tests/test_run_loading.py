"""Loading a run directory: its own template, fingerprint mismatches refused, base models, root configs."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from itune.inference.loading import TemplateMismatchError, load_model, load_run
from itune.runs.read import run_config


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    from tests.tiny_runs import tiny_run

    return tiny_run(tmp_path_factory.mktemp("runs"), "chatml")


def compose_root(name: str, *overrides: str):
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.mark.parametrize("name", ["generate", "chat", "export"])
def test_root_configs_compose(name):
    cfg = compose_root(name, "run=/tmp/x", "template=alpaca")
    OmegaConf.to_container(cfg, resolve=True)
    assert cfg.run == "/tmp/x" and cfg.template.name == "alpaca"
    assert not compose_root(name).get("template")  # no template unless asked: a run uses its own


def test_root_configs_take_a_base_model():
    cfg = compose_root("generate", "model=tiny", "template=chatml")
    model, tokenizer, template = load_model(cfg)
    assert template.name == "chatml" and model.config.num_hidden_layers == 2


def test_base_model_needs_a_template():
    with pytest.raises(ValueError, match="template="):
        load_model(compose_root("generate", "model=tiny"))


@pytest.mark.slow
def test_run_loads_with_its_own_template(run_dir):
    model, tokenizer, template = load_run(run_dir)
    assert template.name == "chatml" and hasattr(model, "peft_config")
    merged, _, _ = load_run(run_dir, merged=True)
    assert not hasattr(merged, "peft_config")


@pytest.mark.slow
def test_template_mismatch_is_refused_with_both_shown(run_dir):
    cfg = compose_root("generate", f"run={run_dir}", "template=alpaca")
    with pytest.raises(TemplateMismatchError) as e:
        load_model(cfg)
    msg = str(e.value)
    assert "'chatml'" in msg and "'alpaca'" in msg and "fingerprint" in msg
    assert "### Instruction" in msg and "<|im_start|>" in msg  # the diff of the two specs
    assert "allow_template_mismatch=true" in msg
    cfg.allow_template_mismatch = True
    _, _, template = load_model(cfg)  # explicitly overridden: used, with a warning
    assert template.name == "alpaca"


@pytest.mark.slow
def test_same_template_given_explicitly_is_accepted(run_dir):
    _, _, template = load_model(compose_root("generate", f"run={run_dir}", "template=chatml"))
    assert template.name == "chatml"


@pytest.mark.slow
def test_system_prompt_change_is_a_mismatch(run_dir):
    cfg = compose_root("chat", f"run={run_dir}", "template=chatml", "template.system_prompt=Other")
    with pytest.raises(TemplateMismatchError, match="system_prompt"):
        load_model(cfg)


def test_not_a_run_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an itune run directory"):
        run_config(tmp_path)
