"""Every built-in template: exactly the assistant contents plus end-of-turn tokens are trained."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from itune.data.templates import IGNORE_INDEX, RoleTemplate, TemplateError, TokenizerTemplate
from itune.model import byte_level_tokenizer
from tests.conftest import CONF

TEMPLATES = sorted(f.stem for f in (CONF / "template").glob("*.yaml"))
SINGLE = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
MULTI = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
]
SYSTEM = [{"role": "system", "content": "Be terse."}, *MULTI]


def build(name: str, tokenizer, **overrides):
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "template" / f"{name}.yaml"), overrides)
    return instantiate(cfg, tokenizer=tokenizer)


def trained_spans(enc: dict[str, list[int]]) -> list[list[int]]:
    """Contiguous runs of trained token ids."""
    spans, current = [], []
    for tok, label in zip(enc["input_ids"], enc["labels"], strict=True):
        if label == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            assert label == tok
            current.append(tok)
    return [*spans, current] if current else spans


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("conversation", [SINGLE, MULTI, SYSTEM], ids=["single", "multi", "system"])
def test_trained_tokens_are_assistant_content_plus_end_token(name, conversation, tokenizer):
    template = build(name, tokenizer)
    enc = template.encode(conversation)
    assert len(enc["input_ids"]) == len(enc["labels"])
    decoded = [tokenizer.decode(span) for span in trained_spans(enc)]
    expected = [m["content"] + template.end_of_turn for m in conversation if m["role"] == "assistant"]
    assert decoded == expected
    assert decoded[-1].endswith(tokenizer.decode(template.stop_token_ids[:1]))
    assert tokenizer.decode(enc["input_ids"]) == template.render(conversation)


@pytest.mark.parametrize("name", TEMPLATES)
def test_inference_prompt_is_the_training_prefix(name, tokenizer):
    """encode_prompt (inference) yields exactly the tokens training saw before the last answer."""
    template = build(name, tokenizer)
    prompt = template.encode_prompt(MULTI[:-1])
    full = template.encode(MULTI)["input_ids"]
    assert full[: len(prompt)] == prompt
    assert tokenizer.decode(full[len(prompt) :]).startswith(MULTI[-1]["content"])


@pytest.mark.parametrize("name", ["chatml", "alpaca", "llama3"])
def test_system_prompt_is_used_and_not_trained(name, tokenizer):
    template = build(name, tokenizer, system_prompt="You are Acme's assistant.")
    enc = template.encode(SINGLE)
    assert "You are Acme's assistant." in tokenizer.decode(enc["input_ids"])
    assert "Acme" not in "".join(tokenizer.decode(s) for s in trained_spans(enc))
    own = template.encode([{"role": "system", "content": "Other."}, *SINGLE])  # a conversation's own wins
    assert "Acme" not in tokenizer.decode(own["input_ids"])


def test_alpaca_trains_the_eos_token(tokenizer):
    template = build("alpaca", tokenizer)
    enc = template.encode(SINGLE)
    trained = [t for t, label in zip(enc["input_ids"], enc["labels"], strict=True) if label != IGNORE_INDEX]
    assert trained[-1] == tokenizer.eos_token_id


def test_fingerprint_is_stable_and_sensitive(tokenizer):
    a, b = build("chatml", tokenizer), build("chatml", tokenizer)
    assert a.fingerprint == b.fingerprint
    assert build("chatml", tokenizer, system_prompt="x").fingerprint != a.fingerprint
    assert build("llama3", tokenizer).fingerprint != a.fingerprint
    saved = a.to_dict()
    assert saved["fingerprint"] == a.fingerprint and "assistant" in saved["mask_policy"]


def test_missing_special_tokens_name_the_template():
    plain = byte_level_tokenizer(special_tokens=[])
    with pytest.raises(Exception, match="template .llama3. needs special tokens"):  # hydra wraps it
        build("llama3", plain)


def test_template_that_rewrites_history_is_refused(tokenizer):
    last_only = "{{ messages[-1]['content'] }}</s>"
    with pytest.raises(TemplateError, match="rewrites earlier turns"):
        TokenizerTemplate(tokenizer, name="last_only", chat_template=last_only)


def test_tokenizer_without_chat_template_is_refused():
    plain = byte_level_tokenizer()
    plain.chat_template = None
    with pytest.raises(TemplateError, match="template 'tokenizer'.*no chat_template"):
        TokenizerTemplate(plain)


def test_bad_messages_are_refused(tokenizer):
    template = build("chatml", tokenizer)
    with pytest.raises(ValueError, match="valid roles"):
        template.encode([{"role": "human", "content": "x"}])


def test_role_template_needs_every_role(tokenizer):
    with pytest.raises(TemplateError, match="no text for roles"):
        RoleTemplate(tokenizer, name="half", roles={"user": {"prefix": "U:"}})


@pytest.mark.integration
@pytest.mark.parametrize("name", ["chatml", "alpaca", "tokenizer"])
def test_real_tokenizer_masks(name):
    """SmolLM2's BPE tokenizer (pad == eos): same exactness as the byte-level one."""
    from itune.demo_model import demo_model_dir
    from itune.model import load_tokenizer

    try:
        path = demo_model_dir(fetch=False)
    except FileNotFoundError:
        pytest.skip("demo model not cached (make demo-model)")
    real = load_tokenizer(str(path))
    template = build(name, real)
    enc = template.encode(SYSTEM)
    decoded = [real.decode(span) for span in trained_spans(enc)]
    assert decoded == [m["content"] + template.end_of_turn for m in SYSTEM if m["role"] == "assistant"]
    prompt = template.encode_prompt(SYSTEM[:-1])
    assert enc["input_ids"][: len(prompt)] == prompt
