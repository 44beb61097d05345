"""The audit and manifest: planted problems caught and counted, determinism, the EOT check, itune-audit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from itune.data.audit import AuditError, run_audit, to_markdown, write_audit
from itune.data.curate import content_hash
from itune.data.datamodule import InstructDataModule
from itune.data.manifest import rows_hash
from itune.data.mix import mix_counts
from tests.conftest import SHARED_DATA, write_jsonl
from tests.test_templates import build

EMAIL = "jane.doe@acme-bank.example.com"
EVAL_PROMPT = (
    "Write a riddle about a house that is not a house. Also include the answer. Your response must be "
    "at least 400 words and have a title wrapped in double angular brackets"
)


def fixtures(tmp: Path, alpaca: Path | None = None, dolly: Path | None = None) -> dict[str, str]:
    """Alpaca + Dolly + a proprietary chat set with a planted e-mail, duplicate and eval prompt."""
    if alpaca is None:
        alpaca = tmp / "alpaca.json"
        rows = [
            {"instruction": f"Name colour number {i}.", "input": "", "output": f"Colour {i}."}
            for i in range(30)
        ]
        alpaca.write_text(json.dumps(rows), encoding="utf-8")
    if dolly is None:
        dolly = write_jsonl(
            tmp / "dolly.jsonl",
            [
                {"instruction": f"Who wrote book {i}?", "context": "", "response": f"Author {i}."}
                for i in range(20)
            ],
        )

    def turn(q: str, a: str) -> dict:
        return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}

    own = [
        turn(f"What is fee schedule {i}?", f"Fee {i} is 1%. This is not financial advice.") for i in range(12)
    ]
    own.append(turn("Who is my account manager?", f"Write to {EMAIL} any time."))  # planted e-mail
    own.append(own[3])  # planted exact duplicate
    own.append(turn(EVAL_PROMPT, "A house of cards."))  # planted eval prompt
    mine = write_jsonl(tmp / "proprietary.jsonl", own)
    evals = write_jsonl(tmp / "ifeval.jsonl", [{"key": 1, "prompt": EVAL_PROMPT, "instruction_id_list": []}])
    return {"alpaca": str(alpaca), "dolly": str(dolly), "mine": str(mine), "eval": str(evals)}


def overrides(files: dict[str, str], run_dir: Path) -> list[str]:
    return [
        f"run_dir={run_dir}",
        "data=alpaca",
        f"data.sources.alpaca.path={files['alpaca']}",
        f"+data.sources.dolly={{path: {files['dolly']}, format: dolly, weight: 0.3}}",
        f"+data.sources.mine={{path: {files['mine']}, format: messages, weight: 0.4}}",
        "data.sources.alpaca.weight=0.3",
        f"curate.filters.decontaminate.files=[{files['eval']}]",
        "data.max_length=512",
    ]


def compose_audit(*over: str):
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        return compose("audit", overrides=list(over))


def step(audit: dict, name: str) -> dict:
    return next(s for s in audit["steps"] if s["name"] == name)


def check_planted(run_dir: Path) -> dict:
    """The planted e-mail, duplicate and eval prompt are each caught, counted and reported (redacted)."""
    audit = json.loads((run_dir / "audit.json").read_text())
    assert step(audit, "pii")["counts"]["mine"]["redacted"] == 1
    assert step(audit, "pii")["details"]["email"] >= 1
    assert step(audit, "exact_dedup")["counts"]["mine"]["dropped"] == 1
    dups = step(audit, "exact_dedup")["examples"]["dropped"]
    assert any(e["source"] == "mine" and e["detail"] == "duplicate of mine row 3" for e in dups)
    assert step(audit, "decontaminate")["counts"]["mine"]["dropped"] == 1
    assert any(
        e["source"] == "mine" and e["row"] == 14 for e in step(audit, "decontaminate")["examples"]["dropped"]
    )
    md = (run_dir / "audit.md").read_text()
    assert "| pii | row | mine | 15 | 0 | 1 | 0 | 0 |" in md
    assert "| exact_dedup | set | mine | 15 | 1 | 0 | 0 | 0 |" in md
    assert "| decontaminate | row | mine | 14 | 1 | 0 | 0 | 0 |" in md
    for name in ("audit.json", "audit.md", "manifest.json"):
        assert EMAIL not in (run_dir / name).read_text(), f"raw PII leaked into {name}"
    assert "[EMAIL]" in md
    for source in audit["sources"]:
        assert (run_dir / "audit" / f"length_{source}.png").read_bytes()[:4] == b"\x89PNG"
    assert audit["ok"] and audit["checks"][0]["name"] == "end_of_turn_trained"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["mixture_hash"] == audit["mixture_hash"]
    assert len(manifest["train"]) == audit["rows_train"]
    return audit


def test_audit_catches_planted_rows_and_reports_counts(tmp_path):
    files = fixtures(tmp_path)
    audit = run_audit(compose_audit(*overrides(files, tmp_path / "run")))
    check_planted(tmp_path / "run")
    src = audit["sources"]
    assert src["mine"]["rows_read"] == 15 and src["mine"]["rows_kept"] == 13
    assert src["alpaca"]["rows_read"] == 30 and src["dolly"]["rows_read"] == 20
    for name, s in src.items():  # every row read is either kept or counted as dropped by one step
        assert s["rows_read"] == s["rows_kept"] + sum(st["counts"][name]["dropped"] for st in audit["steps"])
    assert abs(sum(s["share_effective"] for s in src.values()) - 1) < 1e-5
    assert abs(sum(s["share_of_trained_tokens"] for s in src.values()) - 1) < 1e-3
    roles = audit["tokens"]["per_role"]
    assert roles["assistant"]["trained_fraction"] == 1.0 and roles["user"]["trained_est"] == 0
    # the mixture's shares follow the weights; the small proprietary set is upsampled and says so
    total = audit["rows_train"]
    expected = mix_counts({"alpaca": 0.3, "dolly": 0.3, "mine": 0.4}, total)
    assert {n: s["rows_in_mix"] for n, s in src.items()} == expected
    assert src["mine"]["upsampled"] and src["mine"]["rows_in_mix"] > src["mine"]["rows_train_available"]


def test_manifest_is_deterministic(tmp_path, tokenizer):
    files = fixtures(tmp_path)
    template = build("chatml", tokenizer)
    sources = {
        "alpaca": {"path": files["alpaca"], "weight": 1},
        "mine": {"path": files["mine"], "format": "messages", "weight": 1},
    }

    def manifest(seed: int) -> dict:
        dm = InstructDataModule(sources, tokenizer, template, num_samples=40, seed=seed, val_fraction=0.1)
        dm.setup("fit")
        return dm.manifest

    a, b, c = manifest(7), manifest(7), manifest(8)
    assert a["mixture_hash"] == b["mixture_hash"] and a["train"] == b["train"]
    assert c["mixture_hash"] != a["mixture_hash"]
    assert a["mixture_hash"] == rows_hash(a["train"] + [["--val--", 0, ""]] + a["val"])
    assert len(a["train"]) == 40 and a["sources"]["mine"]["rows_in_mix"] == 20
    # a manifest row names its source file's row and the hash of what was trained
    raw = [json.loads(line) for line in Path(files["mine"]).read_text().splitlines()]
    name, row, sha = next(r for r in a["train"] if r[0] == "mine")
    assert sha == content_hash(raw[row]["messages"])


def test_num_samples_as_one_pass_over_a_source(tmp_path, tokenizer):
    files = fixtures(tmp_path)
    sources = {
        "alpaca": {"path": files["alpaca"], "weight": 0.5},
        "dolly": {"path": files["dolly"], "weight": 0.5},
    }
    sources["dolly"]["format"] = "dolly"
    dm = InstructDataModule(
        sources, tokenizer, build("chatml", tokenizer), num_samples="dolly", val_fraction=0
    )
    dm.setup("fit")
    assert dm.stats["data/dolly/rows_in_mix"] == 20 and len(dm.train_set) == 40
    assert dm.manifest["sources"]["dolly"]["passes"] == 1.0
    with pytest.raises(ValueError, match="a number, null .* or a source name"):
        InstructDataModule(sources, tokenizer, build("chatml", tokenizer), num_samples="nope")


def test_end_of_turn_never_trained_fails_after_writing(tmp_path, tokenizer):
    path = write_jsonl(
        tmp_path / "long.jsonl", [{"instruction": "q", "input": "", "output": "x" * 300} for _ in range(4)]
    )
    template = build("chatml", tokenizer)
    dm = InstructDataModule(
        {"long": {"path": str(path)}},
        tokenizer,
        template,
        max_length=40,
        overlength="truncate",
        val_fraction=0,
    )
    dm.setup("fit")
    assert dm.audit["checks"][0]["ok"] is False
    with pytest.raises(
        AuditError, match=r"end-of-turn token '<\|im_end\|>' is never trained in source\(s\) \['long'\]"
    ):
        write_audit(tmp_path / "run", dm)
    assert "FAIL `end_of_turn_trained`" in (tmp_path / "run" / "audit.md").read_text()
    assert step(dm.audit, "max_length")["counts"]["long"]["truncated"] == 4
    assert "truncated" in to_markdown(dm.audit)


def test_malformed_json_lines_skipped_are_counted(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    good = [json.dumps({"instruction": f"q{i}", "input": "", "output": "a"}) for i in range(4)]
    path.write_text("\n".join([good[0], '{"instruction": "x", "output": ', *good[1:], "[1, 2]"]) + "\n")
    dm = InstructDataModule(
        {"m": {"path": str(path)}}, tokenizer, build("chatml", tokenizer), on_bad_row="skip", val_fraction=0
    )
    dm.setup("fit")
    fmt = step(dm.audit, "format")
    assert fmt["counts"]["m"] == {"in": 6, "dropped": 2, "redacted": 0, "flagged": 0, "truncated": 0}
    assert [e["detail"] for e in fmt["examples"]["dropped"]][:2] == [
        "malformed JSON line 2: Expecting value (column 32)",
        "malformed JSON line 6: expected a JSON object per line, got list",
    ]
    assert dm.stats["data/m/rows_malformed_skipped"] == 2 and len(dm.train_set) == 4


def test_fail_on_fails_after_writing_and_says_what_was_found(tmp_path):
    files = fixtures(tmp_path)
    over = overrides(files, tmp_path / "run")
    with pytest.raises(AuditError) as failed:
        run_audit(compose_audit(*over, "fail_on=[pii,terms,decontaminate]"))
    message = str(failed.value)
    assert message == (
        "data audit fail_on=[pii,terms,decontaminate]: pii: 1 row redacted (email × 1); "
        f"decontaminate: 1 row dropped ({Path(files['eval']).name} × 1)"
    )
    assert "\n" not in message and EMAIL not in message  # one line, no raw PII
    check_planted(tmp_path / "run")  # the report is written first
    # nothing found by the named steps: the audit passes
    audit = run_audit(compose_audit(*overrides(files, tmp_path / "run2"), "fail_on=[terms,no_trained]"))
    assert audit["ok"]


def test_fail_on_rejects_an_unknown_step_before_reading_data(tmp_path):
    files = fixtures(tmp_path)
    cfg = compose_audit(
        *overrides(files, tmp_path / "run"), "curate.filters.terms=null", "fail_on=[pii,toxic]"
    )
    with pytest.raises(
        ValueError, match=r"fail_on=\['toxic'\] names no step of this audit; valid: format, pii, "
    ) as e:
        run_audit(cfg)
    assert "terms" not in str(e.value)  # switched off: not a step of this audit
    assert not (tmp_path / "run" / "audit.json").exists()


def run_cli(files: dict[str, str], run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    over = [o for o in overrides(files, run_dir) if not o.startswith("run_dir=")] + list(extra)
    cmd = [sys.executable, "-m", "itune.cli.audit", f"hydra.run.dir={run_dir}", *over]
    env = {**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=run_dir.parent)


@pytest.mark.slow
def test_itune_audit_command(tmp_path):
    files = fixtures(tmp_path)
    done = run_cli(files, tmp_path / "run")
    assert done.returncode == 0, done.stderr[-3000:]
    check_planted(tmp_path / "run")
    assert (tmp_path / "run" / ".hydra" / "config.yaml").exists()  # its own Hydra run dir


@pytest.mark.slow
def test_itune_audit_fail_on_exits_2(tmp_path):
    files = fixtures(tmp_path)
    done = run_cli(files, tmp_path / "run", "fail_on=[pii]")
    assert done.returncode == 2, done.stderr[-3000:]
    expected = "itune-audit: error: data audit fail_on=[pii]: pii: 1 row redacted (email × 1)"
    assert done.stderr.strip().splitlines()[-1] == expected
    check_planted(tmp_path / "run")


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not (SHARED_DATA / "alpaca_5000.json").exists(), reason="shared data absent")
def test_itune_audit_on_real_data(tmp_path):
    files = fixtures(
        tmp_path,
        alpaca=SHARED_DATA / "alpaca_5000.json",
        dolly=SHARED_DATA / "dolly_first6400_no_context.jsonl",
    )
    files["eval"] = str(SHARED_DATA / "ifeval_input_data.jsonl")  # holds EVAL_PROMPT (IFEval key 1000+)
    done = run_cli(files, tmp_path / "run", "data.on_bad_row=skip")  # Alpaca has rows with an empty output
    assert done.returncode == 0, done.stderr[-3000:]
    audit = check_planted(tmp_path / "run")
    assert audit["sources"]["alpaca"]["rows_read"] == 5000 and audit["sources"]["dolly"]["rows_read"] == 6400
    assert step(audit, "format")["counts"]["alpaca"]["dropped"] >= 1
    assert (
        step(audit, "exact_dedup")["totals"]["dropped"] + step(audit, "near_dedup")["totals"]["dropped"] > 1
    )
