"""itune-export: the exported chat_template renders what itune trains on; transformers loads the export."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from transformers import AutoModelForCausalLM, AutoTokenizer

from itune.export import chat_template, export_run
from itune.run_loading import load_run
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


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    from tests.tiny_runs import tiny_run

    base = tmp_path_factory.mktemp("runs")
    return lambda template="chatml": tiny_run(base, template)
