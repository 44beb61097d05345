"""Regression tests for what a new team hit in its first hour (issue 16): each failed before its fix."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from peft import LoraConfig

from itune.data.formats import RowError
from itune.data.mix import mixture_table, mixture_warnings
from itune.model import check_peft_saveable
from itune.resume_run import check_resume, resume_argv
from tests.conftest import write_jsonl
from tests.test_datamodule import chatml, datamodule, rows  # noqa: F401  (chatml is a fixture)

ROOT = Path(__file__).resolve().parents[1]
TEAM = ROOT / "scripts" / "team_presets"


# -- 1. a list for peft.target_modules ----------------------------------------------------------------
def test_unsaveable_peft_config_fails_before_training():
    config = LoraConfig(target_modules=["q_proj"])
    config.target_modules = OmegaConf.create(["q_proj", "v_proj"])  # what Hydra passed without _convert_
    with pytest.raises(ValueError, match="peft: the adapter config could not be saved"):
        check_peft_saveable(config)
    check_peft_saveable(LoraConfig(target_modules=["q_proj", "v_proj"]))  # plain lists save


@pytest.mark.slow
def test_target_modules_list_trains_and_saves(tmp_path):
    from tests.tiny_runs import tiny_run

    run = tiny_run(tmp_path, "chatml", "peft.target_modules=[q_proj,v_proj]", "trainer.max_steps=2")
    saved = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert sorted(saved["target_modules"]) == ["q_proj", "v_proj"]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


# -- 5. resume ---------------------------------------------------------------------------------------
def test_resume_argv_reuses_the_runs_overrides(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- model=tiny\n- optimizer.lr=0.01\n- ckpt_path=null\n")
    argv = resume_argv([f"resume={run}", "--cfg", "job"])
    assert argv[:2] == ["--cfg", "job"] and "model=tiny" in argv and "optimizer.lr=0.01" in argv
    assert "ckpt_path=last" in argv and "ckpt_path=null" not in argv
    assert f"hydra.run.dir='{run.resolve()}'" in argv
    assert resume_argv(["model=tiny"]) == ["model=tiny"]  # no resume: untouched
    allowed = resume_argv([f"resume={run}", "trainer.max_steps=99", "resume_allow_changes=true"])
    assert "trainer.max_steps=99" in allowed and "resume_allow_changes=true" in allowed


def test_resume_argv_refuses_new_overrides_and_unknown_dirs(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        resume_argv([f"resume={tmp_path / 'nowhere'}"])
    assert e.value.code == 2 and "no such run directory" in capsys.readouterr().err
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- model=tiny\n")
    with pytest.raises(SystemExit) as e:
        resume_argv([f"resume={tmp_path}", "optimizer.lr=1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "optimizer.lr=1" in err and "resume_allow_changes=true" in err


def test_check_resume_names_what_changed():
    previous = {"mixture_hash": "a" * 64, "template": ("chatml", "f1"), "model": {"name": "x"}}
    check_resume(previous, "a" * 64, ("chatml", "f1"), {"name": "x"})  # same: fine
    with pytest.raises(
        ValueError, match=r"data mixture .*; template \(chatml → alpaca\); model \(model.name\)"
    ):
        check_resume(previous, "b" * 64, ("alpaca", "f2"), {"name": "y"})


# -- 6. silent upsampling and drops ------------------------------------------------------------------
def test_mixture_table_and_warnings_are_logged(tmp_path, tokenizer, chatml, caplog):  # noqa: F811
    team = rows(28, "team")
    team[0]["output"] = "long " * 300  # over max_length: dropped
    general = rows(200, "general")
    sources = {
        "team": {"path": str(write_jsonl(tmp_path / "team.jsonl", team)), "weight": 0.7},
        "general": {"path": str(write_jsonl(tmp_path / "general.jsonl", general)), "weight": 0.3},
    }
    with caplog.at_level(logging.INFO, logger="itune.data.datamodule"):
        dm = datamodule(tokenizer, chatml, sources, num_samples=500, val_fraction=0.1, max_length=256)
    table = {r["source"]: r for r in mixture_table(dm.stats, dm.source_names)}
    assert table["team"]["read"] == 28 and table["team"]["too long"] == 1
    assert table["team"]["in mix"] == 350 and table["team"]["passes"] == pytest.approx(350 / 24)
    text = caplog.text
    assert "training mixture" in text and "passes" in text and "too long" in text
    assert "'team' is repeated 14.6x" in text and "data.max_repeats" in text
    assert "'team': 1 of 28 rows dropped (1 too long: raise data.max_length" in text
    assert not [m for m in mixture_warnings(list(table.values()), 20) if "repeated" in m]


# -- 10. smaller frictions -----------------------------------------------------------------------------
def test_row_error_in_a_json_array_says_record_and_suggests_skip(tmp_path, tokenizer, chatml):  # noqa: F811
    data = rows(4)
    data[2]["output"] = ""
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RowError) as e:
        datamodule(tokenizer, chatml, {"mine": {"path": str(path)}})
    msg = str(e.value)
    assert "record 3 of the JSON array" in msg and "JSONL" not in msg and "data.on_bad_row=skip" in msg


def run_help(command: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", f"itune.cli.{command}", *args, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.parametrize("command", ["train", "eval", "report", "audit"])
def test_help_imports_no_torch(command):
    done = run_help(command)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "transformers", "lightning", "datasets", "matplotlib"}


def test_report_help_lists_no_training_groups():
    done = run_help("report")
    assert "sweeps" in done.stdout and "peft:" not in done.stdout and "optimizer:" not in done.stdout


def test_help_with_a_searchpath_lists_the_teams_options():
    env = {**os.environ, "PYTHONPATH": str(TEAM)}
    done = run_help("train", "hydra.searchpath=[pkg://acme_presets]", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "acme_support" in done.stdout and "acme_tiny" in done.stdout


@pytest.mark.slow
def test_generate_warns_when_answers_are_empty(tmp_path, monkeypatch, caplog):
    from itune.inference import generate as generate_cmd
    from tests.tiny_runs import tiny_run

    run = tiny_run(tmp_path, "chatml")
    monkeypatch.setattr(generate_cmd, "generate", lambda *a, **k: ["", "blue"])
    cfg = OmegaConf.create(
        {"run": str(run), "prompts": ["a", "b"], "output": str(tmp_path / "out.jsonl"), "max_new_tokens": 4}
        | {"batch_size": 2, "do_sample": False, "temperature": 1.0, "top_p": 1.0}
    )
    with caplog.at_level(logging.WARNING):
        generate_cmd.run_generate(cfg)
    assert "1 of 2 answers are empty" in caplog.text and "greedy" in caplog.text


@pytest.mark.slow
@pytest.mark.integration
def test_readme_alpaca_command_runs_as_written(compose_train):
    from tests.conftest import SHARED_DATA

    alpaca = SHARED_DATA / "alpaca_5000.json"
    if not alpaca.is_file():
        pytest.skip("../shared/data is absent")
    from itune.train import train

    cfg = compose_train(
        "model=tiny", "data=alpaca", f"data.sources.alpaca.path={alpaca}", "data.on_bad_row=skip"
    )
    cfg.trainer.max_steps = 5
    metrics, _ = train(cfg)
    assert metrics["train/steps"] == 5 and metrics["data/alpaca/rows_malformed_skipped"] == 2
