"""Schemas: every shipped option passes; a misspelled key in a preset fails at composition, named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from itune.config_schema import ConfigSchemaError, check_config
from tests.conftest import CONF, SHARED_DATA

OPTIONS = [
    (g.name, f.stem)
    for g in sorted(CONF.iterdir())
    if g.is_dir() and g.name not in ("base", "hydra", "__pycache__")
    for f in sorted(g.glob("*.yaml"))
]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_passes_the_schema(group, option, compose_train, tmp_path):
    overrides = [f"{group}={option}"]
    if group == "quantization":  # the tiny model takes no quantization_config
        overrides.append("model=llama3_1_8b")
    if group == "data" and option == "flan":
        overrides.append(f"data.sources.flan.path={tmp_path / 'flan.jsonl'}")
    if group == "eval" and "data_dir" in (CONF / "eval" / f"{option}.yaml").read_text():
        overrides.append(f"eval.data_dir={SHARED_DATA}")
    check_config(compose_train(*overrides), files=False)  # keys and values; the files are not there


def preset(tmp_path: Path, text: str) -> str:
    """A team preset folder with experiment/typo.yaml; returns its search path override."""
    (tmp_path / "team" / "experiment").mkdir(parents=True)
    (tmp_path / "team" / "experiment" / "typo.yaml").write_text("# @package _global_\n" + text)
    return f"hydra.searchpath=[file://{tmp_path / 'team'}]"


@pytest.mark.parametrize(
    ("text", "named", "hint"),
    [
        ("optimizer:\n  lrr: 1.0e-4\n", "optimizer.lrr", "did you mean 'lr'"),
        ("trainer:\n  max_step: 10\n", "trainer.max_step", "did you mean 'max_steps'"),
        ("data:\n  sources:\n    domain:\n      wieght: 0.5\n", "data.sources.domain.wieght", "'weight'"),
        ("peft:\n  rank: 4\n", "peft.rank", "not a parameter of peft.LoraConfig"),
        ("scheduler:\n  warmup_steps: 3\n", "scheduler.warmup_steps", "num_warmup_steps"),
    ],
)
def test_misspelled_key_in_a_preset_is_named(text, named, hint, compose_train, tmp_path):
    cfg = compose_train(preset(tmp_path, text), "experiment=typo")
    with pytest.raises(ConfigSchemaError) as e:
        check_config(cfg)
    assert named in str(e.value) and hint in str(e.value)


def test_misspelled_root_key_fails_while_composing(compose_train, tmp_path):
    with pytest.raises(ConfigCompositionException) as e:
        compose_train(preset(tmp_path, "seeed: 1\n"), "experiment=typo")
    assert "seeed" in str(e.value) or "seeed" in str(e.value.__cause__)


@pytest.mark.slow
def test_itune_train_stops_before_loading_anything(tmp_path):
    exe = str(Path(sys.executable).with_name("itune-train"))
    done = subprocess.run(
        [
            exe,
            preset(tmp_path, "optimizer:\n  lrr: 1.0e-4\n"),
            "experiment=typo",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "optimizer.lrr" in done.stderr
    assert not (tmp_path / "run" / "audit.json").exists()  # failed before the data was prepared
    assert "failed" in (tmp_path / "run" / "status.json").read_text()
