"""itune-export: the exported chat_template renders what itune trains on; transformers loads the export."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import stat
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from transformers import AutoModelForCausalLM, AutoTokenizer

from itune.inference.export import chat_template, export_run
from itune.inference.loading import load_run
from itune.runs.write import new_file_mode
from tests.conftest import CONF

TEMPLATES = sorted(f.stem for f in (CONF / "template").glob("*.yaml"))
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sum 2+2?"}],
    [
        {"role": "user", "content": "Name a colour.\nOne word."},
        {"role": "assistant", "content": "Red"},
        {"role": "user", "content": 'Another, with "quotes" and é?'},
        {"role": "assistant", "content": "Blue {{ not jinja }}"},
    ],
]


def build_template(tokenizer, option: str, *overrides: str):
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"template={option}", *overrides])
    return instantiate(cfg.template, tokenizer=tokenizer)


@pytest.mark.parametrize("system_prompt", [None, "You are terse."], ids=["no-system", "system"])
@pytest.mark.parametrize("option", TEMPLATES)
def test_chat_template_renders_like_itune(option, system_prompt, tokenizer):
    extra = [] if system_prompt is None else [f"template.system_prompt='{system_prompt}'"]
    template = build_template(tokenizer, option, *extra)
    exported = copy.deepcopy(tokenizer)
    exported.chat_template = chat_template(template)
    for messages in CONVERSATIONS:
        for gen in (False, True):
            if gen and messages[-1]["role"] == "assistant":
                continue
            ours = template.render(messages, add_generation_prompt=gen)
            theirs = exported.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert theirs == ours, (option, messages, gen)
            ids = exported.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            if gen:  # the prompt tokens of inference are itune's, token for token
                assert list(ids) == template.encode_prompt(messages)


@pytest.mark.slow
@pytest.mark.parametrize("option", ["chatml", "alpaca"])
def test_export_round_trip(option, trained_run, tmp_path):
    run_dir = trained_run(option)
    out = export_run(run_dir, tmp_path / "export", merge=True)
    assert (out / "model.safetensors").exists() and (out / "README.md").exists()

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no itune, no peft
    peft_model, itune_tok, template = load_run(run_dir, merged=False)
    messages = CONVERSATIONS[2][:3]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == template.render(messages, add_generation_prompt=True)

    ids = torch.tensor([template.encode_prompt(messages)])
    with torch.no_grad():
        merged_logits = model(ids).logits
        adapter_logits = peft_model(input_ids=ids).logits
    torch.testing.assert_close(merged_logits, adapter_logits, rtol=1e-4, atol=1e-4)
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # the adapter is not the identity: the test means something

    eos = model.generation_config.eos_token_id
    assert sorted(eos if isinstance(eos, list) else [eos]) == sorted(template.stop_token_ids)
    card = (out / "README.md").read_text()
    saved = json.loads((run_dir / "template.json").read_text())
    assert saved["fingerprint"] in card and "itune/tiny-llama" in card and "train/loss" in card
    manifest = run_dir / "manifest.json"
    if manifest.exists():
        assert json.loads(manifest.read_text())["mixture_hash"] in card

    adapter_out = export_run(run_dir, tmp_path / "adapter_export", merge=False)
    assert (adapter_out / "adapter_model.safetensors").exists()
    assert AutoTokenizer.from_pretrained(adapter_out).chat_template == tok.chat_template


@pytest.mark.slow
def test_export_refuses_existing_dir(trained_run, tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(FileExistsError, match="overwrite=true"):
        export_run(trained_run("chatml"), tmp_path / "x")


@pytest.mark.slow
def test_model_card_snippet_runs_as_written(trained_run, tmp_path, monkeypatch, capsys):
    out = export_run(trained_run("chatml"), tmp_path / "export")
    card = (out / "README.md").read_text(encoding="utf-8")
    (snippet,) = re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL)
    monkeypatch.chdir(tmp_path)  # the snippet loads the export by its directory name
    exec(compile(snippet, str(out / "README.md"), "exec"), {})  # noqa: S102  (the card's code, as written)
    assert capsys.readouterr().out.endswith("\n")  # it printed the (tiny random model's) answer


def modes(directory: Path) -> dict[str, int]:
    """Permission bits of every file in a directory, by name."""
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir() if p.is_file()}


@pytest.mark.slow
def test_safetensors_files_honour_the_umask(trained_run, full_run, tmp_path):
    for weights in (trained_run("chatml") / "adapter", full_run / "model"):  # written under this umask
        assert {n: m for n, m in modes(weights).items() if n.endswith(".safetensors")}
        assert set(modes(weights).values()) == {new_file_mode()}, modes(weights)
    old = os.umask(0o027)
    try:
        merged = export_run(trained_run("chatml"), tmp_path / "merged")
        adapter = export_run(trained_run("chatml"), tmp_path / "adapter", merge=False)
    finally:
        os.umask(old)
    for out, weights in ((merged, "model.safetensors"), (adapter, "adapter_model.safetensors")):
        assert modes(out)[weights] == 0o640
        assert set(modes(out).values()) == {0o640}, modes(out)  # like every other file


@pytest.mark.slow
def test_adapter_export_names_its_base_model(trained_run, tmp_path):
    out = export_run(trained_run("chatml"), tmp_path / "adapter", merge=False)
    config = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["base_model_name_or_path"] == "itune/tiny-llama"  # the run's model.name (no name_or_path)


@pytest.mark.slow
def test_full_fine_tune_export_says_full_model(full_run, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="itune.inference.export"):
        out = export_run(full_run, tmp_path / "export")
    assert (out / "model.safetensors").exists()
    assert "(full model" in caplog.text and "merged" not in caplog.text
    assert "| peft | `none` |" in (out / "README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    from tests.tiny_runs import tiny_run

    base = tmp_path_factory.mktemp("runs")
    return lambda template="chatml": tiny_run(base, template)


@pytest.fixture(scope="session")
def full_run(tmp_path_factory) -> Path:
    """A tiny full fine-tune (no peft): the run saves `model/`."""
    from tests.tiny_runs import tiny_run

    return tiny_run(tmp_path_factory.mktemp("full_runs"), "chatml", "peft=none")
