"""Every option of every config group and every experiment composes; cheap nodes instantiate."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf

from tests.conftest import CONF, SHARED_DATA

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("base", "__pycache__"))
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]


def test_every_group_has_options():
    core = {"model", "data", "template", "optimizer", "scheduler", "peft", "regularizer", "trainer", "logger"}
    assert core <= set(GROUPS)
    assert len(OPTIONS) >= 30


def bind(node) -> None:
    """Check that a heavy node's keys are parameters of its target, without calling it."""
    kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not k.startswith("_")}
    inspect.signature(get_method(node._target_)).bind_partial(**kwargs)  # injected args come later


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_builds(group, option, compose_train, tokenizer, tmp_path):
    overrides = [f"{group}={option}"]
    if group == "quantization":  # the tiny model takes no quantization_config
        overrides.append("model=llama3_1_8b")
    if group == "data" and option == "flan":
        overrides.append(f"data.sources.flan.path={tmp_path / 'flan.jsonl'}")
    needs_eval_data = group == "eval" and "data_dir" in (CONF / "eval" / f"{option}.yaml").read_text()
    if needs_eval_data:
        overrides.append(f"eval.data_dir={SHARED_DATA}")
    cfg = compose_train(*overrides)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves

    for node in (cfg.model.lm, cfg.model.tokenizer):
        bind(node)
    template = instantiate(cfg.template, tokenizer=tokenizer)
    assert template.fingerprint
    bind(cfg.data)
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = instantiate(cfg.optimizer)(params)
    if cfg.scheduler:
        factory = instantiate(cfg.scheduler)
        extra = (
            {"num_training_steps": 10}
            if "num_training_steps" in inspect.signature(factory).parameters
            else {}
        )
        factory(optimizer, **extra)
    if cfg.peft:
        assert instantiate(cfg.peft).r > 0
    if cfg.regularizer:
        assert instantiate(cfg.regularizer).weight >= 0
    for node in (cfg.logger or {}).values():
        instantiate(node)
    callbacks = [instantiate(n) for n in cfg.callbacks.values()]
    if cfg.trainer.accelerator == "cpu":
        instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    else:
        bind(cfg.trainer)
    for node in cfg.eval.suites.values():
        if needs_eval_data and not SHARED_DATA.is_dir():
            bind(node)  # benchmark files are absent here
        else:
            assert instantiate(node).kind in ("domain", "general")


@pytest.mark.parametrize("experiment", sorted(f.stem for f in (CONF / "experiment").glob("*.yaml")))
def test_experiment_composes(experiment, compose_train):
    cfg = compose_train(f"experiment={experiment}")
    OmegaConf.to_container(cfg, resolve=True)
    first = (CONF / "experiment" / f"{experiment}.yaml").read_text().splitlines()[:2]
    assert first[0] == "# @package _global_" and "itune-train" in first[1], "presets open with their command"


def test_tiny_model_builds(compose_train, tokenizer):
    cfg = compose_train("model=tiny")
    model = instantiate(cfg.model.lm)
    assert model.config.vocab_size >= len(tokenizer)


def test_unknown_option_lists_valid_ones(compose_train):
    with pytest.raises(ConfigCompositionException) as e:
        compose_train("template=chatmll")
    assert "chatml" in str(e.value) and "llama3" in str(e.value)


def test_trust_remote_code_is_off_by_default(compose_train):
    for option in (CONF / "model").glob("*.yaml"):
        cfg = compose_train(f"model={option.stem}")
        assert not cfg.model.lm.get("trust_remote_code", False), option.name


def test_conf_is_shipped_in_the_package():
    import itune.conf

    assert (Path(itune.conf.__file__).parent / "train.yaml").exists()
