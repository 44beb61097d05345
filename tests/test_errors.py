"""Bad input gets one readable line and exit status 2, never a traceback (issue 13).

Each case runs `itune-train` in this process (the CLI's own `main`, so Hydra, the checks and the error
format are exercised as a user meets them) on the tiny model and a small data file.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from itune.cli import train as train_cli
from itune.errors import error_line, is_user_error

ROWS = [{"instruction": f"Say {w}.", "input": "", "output": f"{w}!"} for w in ["red", "blue", "gold"] * 4]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    missing_field = tmp_path / "missing.jsonl"
    missing_field.write_text(
        json.dumps(ROWS[0]) + "\n" + json.dumps({"instruction": "q", "answer": "a"}) + "\n"
    )
    empty_output = tmp_path / "empty_output.json"
    empty_output.write_text(json.dumps([ROWS[0], ROWS[1] | {"output": ""}]))
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(
        json.dumps(ROWS[0]).encode() + b"\n" + '{"instruction": "caf\xe9"}\n'.encode("latin-1")
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    text = tmp_path / "rows.txt"
    text.write_text("hello\n")
    wrong_type = tmp_path / "wrong_type.jsonl"
    wrong_type.write_text(json.dumps(ROWS[0] | {"output": 3}) + "\n")
    return {p.stem: p for p in tmp_path.iterdir()}


def _point_log_handlers_at_stderr() -> None:
    """Libraries (lightning, datasets) add stream handlers at import, bound to an earlier test's stderr."""
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            stream = getattr(handler, "__dict__", {}).get("stream")  # a plain attribute, not a property
            if stream is not None and getattr(stream, "closed", False):
                handler.stream = sys.stderr  # not setStream: it flushes the closed one


def run_train(tmp_path: Path, capsys, *overrides: str) -> tuple[int, str]:
    """`itune-train <overrides>` in this process: (exit status, stderr)."""
    _point_log_handlers_at_stderr()
    argv = ["itune-train", f"hydra.run.dir={tmp_path / 'run'}", "model=tiny", "logger=none", *overrides]
    old_argv, sys.argv = sys.argv, argv
    try:
        with pytest.raises(SystemExit) as e:
            train_cli.main()
    finally:
        sys.argv = old_argv
        GlobalHydra.instance().clear()
    return e.value.code, capsys.readouterr().err


def source(path: Path | str, *extra: str) -> list[str]:
    return ["data=alpaca", f"data.sources.alpaca.path={path}", *extra]


# (case id, overrides given the files, texts the error line must contain)
CASES = [
    ("lr not a number", lambda f: ["optimizer.lr=fast"], ["optimizer.lr='fast'", "a number > 0"]),
    ("lr negative", lambda f: ["optimizer.lr=-1e-3"], ["optimizer.lr=-0.001", "> 0"]),
    ("lora rank 0", lambda f: ["peft.r=0"], ["peft.r=0", "integer >= 1"]),
    ("lora dropout", lambda f: ["peft.lora_dropout=2"], ["peft.lora_dropout=2", "[0, 1)"]),
    ("batch size 0", lambda f: ["data.batch_size=0"], ["data.batch_size=0", "integer >= 1"]),
    ("max_steps negative", lambda f: ["trainer.max_steps=-5"], ["trainer.max_steps=-5", "-1 (no limit)"]),
    ("accumulate 0", lambda f: ["trainer.accumulate_grad_batches=0"], ["accumulate_grad_batches=0"]),
    ("warmup negative", lambda f: ["scheduler.num_warmup_steps=-1"], ["num_warmup_steps=-1", ">= 0"]),
    ("eval batch size", lambda f: ["data.eval_batch_size=0"], ["data.eval_batch_size=0", "null or"]),
    ("val fraction", lambda f: ["data.val_fraction=1.5"], ["data.val_fraction=1.5", "[0, 1)"]),
    ("max_length", lambda f: ["data.max_length=0"], ["data.max_length=0"]),
    ("num_samples 0", lambda f: ["data.num_samples=0"], ["data.num_samples=0"]),
    ("weight negative", lambda f: ["data.sources.general.weight=-1"], ["data.sources.general.weight=-1"]),
    ("misspelt optimizer key", lambda f: ["+optimizer.lrr=1"], ["optimizer.lrr", "did you mean 'lr'"]),
    ("misspelt trainer key", lambda f: ["+trainer.max_step=5"], ["trainer.max_step", "max_steps"]),
    (
        "misspelt source key",
        lambda f: ["+data.sources.general.wieght=1"],
        ["wieght", "did you mean 'weight'"],
    ),
    (
        "missing file",
        lambda f: source("/nonexistent/data.jsonl"),
        ["data.sources.alpaca.path", "no such file"],
    ),
    ("empty file", lambda f: source(f["empty"]), ["empty.jsonl", "empty"]),
    ("unsupported extension", lambda f: source(f["rows"]), ["rows.txt", "unsupported extension"]),
    ("malformed JSON line", lambda f: source(f["broken"]), ["broken.jsonl", "line 2"]),
    ("missing field", lambda f: source(f["missing"]), ["missing.jsonl", "line 2", "data.on_bad_row=skip"]),
    (
        "empty field in a JSON array",
        lambda f: source(f["empty_output"]),
        ["record 2", "field 'output' is empty"],
    ),
    ("wrong type", lambda f: source(f["wrong_type"]), ["wrong_type.jsonl", "must be a string"]),
    ("not UTF-8", lambda f: source(f["latin1"]), ["latin1.jsonl", "line 2", "UTF-8"]),
    ("unknown format", lambda f: source(f["good"], "data.sources.alpaca.format=alpacca"), ["alpacca"]),
    ("overlength policy", lambda f: ["data.overlength=cut"], ["data.overlength='cut'", "drop, truncate"]),
    ("bad row policy", lambda f: ["data.on_bad_row=ignore"], ["data.on_bad_row='ignore'", "error, skip"]),
    (
        "num_samples names no source",
        lambda f: ["data.num_samples=alpaca"],
        ["num_samples='alpaca'", "general"],
    ),
    ("resume a missing run", lambda f: ["resume=/nonexistent/run"], ["resume=/nonexistent/run", "no such"]),
    ("resume without checkpoint", lambda f: ["ckpt_path=last"], ["ckpt_path=last", "no checkpoint at"]),
]


@pytest.mark.parametrize(("overrides", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, files, overrides, expected):
    code, err = run_train(tmp_path, capsys, *overrides(files))
    errors = [line for line in err.splitlines() if line.startswith("itune-train: error: ")]
    assert code == 2, err[-3000:]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    for text in expected:
        assert text in errors[0], errors[0]


def test_at_least_25_cases():
    assert len(CASES) >= 25


def test_a_bug_keeps_its_traceback():
    def boom() -> None:
        raise ZeroDivisionError("division by zero")

    try:
        boom()
    except ZeroDivisionError as e:
        assert not is_user_error(e)
    assert is_user_error(FileNotFoundError("x")) and error_line(ValueError("a\n b")) == "a | b"


@pytest.mark.parametrize("preset", ["alpaca", "dolly", "flan", "demo"])
def test_every_source_key_is_settable_without_plus(compose_train, preset):
    from hydra import compose, initialize_config_module  # noqa: F401  (compose_train uses them)

    name = {"demo": "domain"}.get(preset, preset)
    cfg = compose_train(
        f"data={preset}",
        f"data.sources.{name}.path=/data/x.jsonl",
        f"data.sources.{name}.format=messages",
        f"data.sources.{name}.weight=2",
        f"data.sources.{name}.fields={{output: answer}}",
        f"data.sources.{name}.split=validation",
        f"data.sources.{name}.subset=en",
        "+data.sources.mine={path: /data/mine.jsonl, format: alpaca, weight: 0.5}",
    )
    src = cfg.data.sources[name]
    assert (src.format, src.weight, src.fields.output, src.split, src.subset) == (
        "messages",
        2,
        "answer",
        "validation",
        "en",
    )
    assert cfg.data.sources.mine.weight == 0.5
