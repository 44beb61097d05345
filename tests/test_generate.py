"""itune-generate: JSONL prompts → JSONL answers from a run directory, through the run's template."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from itune.inference.generate import read_prompts, to_conversation


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    from tests.tiny_runs import tiny_run

    return tiny_run(tmp_path_factory.mktemp("runs"), "chatml")


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"prompt": "Hi"}, [{"role": "user", "content": "Hi"}]),
        ({"instruction": "Add", "input": "2 2"}, [{"role": "user", "content": "Add\n\n2 2"}]),
        ({"messages": [{"role": "user", "content": "Q"}]}, [{"role": "user", "content": "Q"}]),
    ],
)
def test_rows_to_conversations(row, expected):
    assert to_conversation(row) == expected


def test_bad_rows_are_named(tmp_path):
    with pytest.raises(ValueError, match="item 3"):
        to_conversation({"question": "?"}, where="item 3")
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{broken\n')
    with pytest.raises(ValueError, match="line 2"):
        read_prompts(None, str(path))


@pytest.mark.slow
def test_itune_generate_command(run_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": i, "prompt": f"Repeat the word {w}."} for i, w in enumerate(["red", "blue", "gold"])]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "answers.jsonl"
    cmd = [
        str(Path(sys.executable).with_name("itune-generate")),
        f"run={run_dir}",
        f"input={prompts}",
        f"output={out}",
        "max_new_tokens=8",
        "batch_size=2",
        "prompts=[Hello]",
    ]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a.get("id") for a in answers] == [None, 0, 1, 2]
    assert all(isinstance(a["answer"], str) for a in answers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl", "prompts.jsonl"]  # no clutter

    refused = subprocess.run(
        [*cmd, "template=alpaca"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert refused.returncode != 0 and "template mismatch" in refused.stderr
