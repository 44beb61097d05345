"""The `model`, `eval` and `tracking` groups are checked like `_target_` nodes; conf layout; logging preset.

A misspelt key in those groups (a preset or a `+key=` override) is named with the valid keys before anything
is loaded; the shared loader/eval defaults stay out of `--help`; the inference commands share one logging
preset.
"""

from __future__ import annotations

import dataclasses

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from itune.config_schema import (
    GROUP_SCHEMAS,
    ConfigSchemaError,
    EvalSchema,
    ModelSchema,
    TrackingSchema,
    check_config,
    check_group_keys,
    from_node,
    key_problems,
)
from itune.errors import error_line
from tests.conftest import CONF


def preset(tmp_path, text: str) -> str:
    """A team preset folder with experiment/typo.yaml; returns its search path override."""
    (tmp_path / "team" / "experiment").mkdir(parents=True)
    (tmp_path / "team" / "experiment" / "typo.yaml").write_text("# @package _global_\n" + text)
    return f"hydra.searchpath=[file://{tmp_path / 'team'}]"


@pytest.mark.parametrize(
    ("text", "named", "hint", "valid"),
    [
        ("eval:\n  on_bse: true\n", "eval.on_bse", "did you mean 'on_base'", "'show_samples'"),
        (
            "model:\n  gradient_checkpoint: true\n",
            "model.gradient_checkpoint",
            "'gradient_checkpointing'",
            "'lm'",
        ),
        (
            "model:\n  liger_kernal: true\n",
            "model.liger_kernal",
            "did you mean 'liger_kernel'",
            "'chunked_loss'",
        ),
        ("eval:\n  stats:\n    nboot: 10\n", "eval.stats.nboot", "did you mean 'n_boot'", "'alpha'"),
        (
            "tracking:\n  register_modl: fin\n",
            "tracking.register_modl",
            "'register_model'",
            "['register_model']",
        ),
    ],
)
def test_unknown_group_key_is_named_with_the_valid_ones(text, named, hint, valid, compose_train, tmp_path):
    cfg = compose_train(preset(tmp_path, text), "experiment=typo")
    with pytest.raises(ConfigSchemaError) as e:
        check_config(cfg, files=False)
    line = next(x for x in str(e.value).splitlines() if named in x)
    assert hint in line and "valid keys:" in line and valid in line, line
    assert "\n" not in error_line(e.value)  # what `itune-<cmd>: error:` prints: one line


def test_plus_override_is_checked_too(compose_train):
    with pytest.raises(ConfigSchemaError, match=r"model\.compiled: not a key of the model group"):
        check_config(compose_train("+model.compiled=true"), files=False)


def test_itune_eval_config_is_checked():
    """itune-eval composes the same groups under another root: check_group_keys checks them there."""
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        good = compose("eval", overrides=["model=tiny", "template=chatml", "eval=demo"])
        bad = compose("eval", overrides=["model=tiny", "+eval.on_bse=false", "+model.dtyp=float32"])
    check_group_keys(good)
    with pytest.raises(ConfigSchemaError) as e:
        check_group_keys(bad)
    assert "eval.on_bse" in str(e.value) and "model.dtyp" in str(e.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.compile=yes", "model.compile='yes': expected true or false"),
        ("model.chunked_loss=0", "model.chunked_loss=0: expected true, false or tokens per chunk"),
        ("eval.on_base=maybe", "eval.on_base='maybe': expected true or false"),
        ("eval.stats.alpha=2", "eval.stats.alpha=2: expected a number in (0, 1)"),
        ("eval.show_samples=-1", "eval.show_samples=-1: expected an integer >= 0"),
    ],
)
def test_group_values_are_checked(override, message, compose_train):
    with pytest.raises(ConfigSchemaError) as e:
        check_config(compose_train(override), files=False)
    assert message in str(e.value)


def test_schemas_cover_every_shipped_key():
    """Every key the shipped model/eval/tracking presets set is a schema field (and each field is used)."""
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        for group in ("model", "eval"):
            for option in sorted(f.stem for f in (CONF / group).glob("*.yaml")):
                cfg = compose("train", overrides=["run_dir=x", f"{group}={option}"])
                assert not key_problems(OmegaConf.to_container(cfg[group]), *GROUP_SCHEMAS[group]), option
        cfg = compose("train", overrides=["run_dir=x", "logger=mlflow"])
    assert set(cfg.tracking) == {f.name for f in dataclasses.fields(TrackingSchema)}
    model_keys = set(OmegaConf.load(CONF / "_base_hub_model.yaml"))
    assert model_keys == {f.name for f in dataclasses.fields(ModelSchema)}
    eval_keys = set(OmegaConf.load(CONF / "_base_eval.yaml")) | {"data_dir"}  # data_dir: general, ifeval
    assert eval_keys == {f.name for f in dataclasses.fields(EvalSchema)}


@dataclasses.dataclass
class Spec:
    name: str
    path: str
    weight: float = 1.0


def test_from_node_builds_or_names_the_key():
    assert from_node(Spec, {"path": "a.jsonl"}, "data.sources.x", name="x") == Spec("x", "a.jsonl")
    with pytest.raises(ValueError) as e:
        from_node(Spec, {"path": "a", "wieght": 2}, "data.sources.x", name="x")
    assert str(e.value) == (
        "data.sources.x.wieght: not a key of data.sources.x (did you mean 'weight'?); "
        "valid keys: ['path', 'weight']"
    )
    with pytest.raises(ValueError, match="name"):  # a key the caller sets is not the node's to set
        from_node(Spec, {"path": "a", "name": "y"}, "data.sources.x", name="x")


def test_shared_defaults_are_not_a_help_group():
    """`--help` lists config groups from the search path: conf/_base_*.yaml are root files, not a group."""
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        groups = GlobalHydra.instance().hydra.list_all_config_groups()  # what --help's group list reads
        data = compose("train", overrides=["run_dir=x", "data=alpaca"]).data
        evals = compose("train", overrides=["run_dir=x", "eval=none"]).eval
    app_groups = {g for g in groups if not g.startswith("hydra")}
    assert "base" not in app_groups and not (CONF / "base").exists()
    assert {"data", "eval", "model"} <= app_groups
    base_data, base_eval = OmegaConf.load(CONF / "_base_data.yaml"), OmegaConf.load(CONF / "_base_eval.yaml")
    assert set(base_data) <= set(data) and data._target_ == base_data._target_  # the /_base_data default
    assert set(base_eval) <= set(evals) and evals.on_base is False  # eval=none still overrides it


STDERR_LOGGING = {
    "version": 1,
    "formatters": {"simple": {"format": "[%(levelname)s] %(name)s: %(message)s"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "simple", "stream": "ext://sys.stderr"}
    },
    "root": {"level": "INFO", "handlers": ["console"]},
    "disable_existing_loggers": False,
}


@pytest.mark.parametrize("command", ["chat", "export", "generate", "report"])
def test_inference_commands_share_one_logging_preset(command):
    """[LEVEL] name: message on stderr, no log file and no .hydra/ (these commands leave no files)."""
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        cfg = compose(command, return_hydra_config=True)
    logging = OmegaConf.to_container(cfg.hydra.job_logging)
    level = "WARNING" if command == "chat" else "INFO"  # the chat's own output is the conversation
    assert logging == {**STDERR_LOGGING, "root": {"level": level, "handlers": ["console"]}}
    assert cfg.hydra.output_subdir is None
    assert OmegaConf.load(CONF / "hydra" / "job_logging" / "itune_stderr.yaml") == STDERR_LOGGING
    assert "job_logging:\n    formatters" not in (CONF / f"{command}.yaml").read_text()  # not copied again
