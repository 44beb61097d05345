"""itune-export: a run directory → a standard model directory that plain transformers loads.

The directory holds safetensors weights (LoRA merged into the base, or the adapter alone), the tokenizer
with a `chat_template` that renders exactly what itune trained on, a generation_config.json whose
`eos_token_id` lists the template's stop tokens, and a README.md model card with the run's lineage.

Example:
    >>> run_export(OmegaConf.create({"run": "outputs/…", "out": "exported", "merge": True}))  # doctest: +SKIP
    >>> tok = AutoTokenizer.from_pretrained("exported")  # doctest: +SKIP
    >>> tok.apply_chat_template(messages, tokenize=False)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import GenerationConfig

from itune.data.templates import RoleTemplate, Template, TokenizerTemplate
from itune.inference.interpolate import interpolate_model
from itune.inference.loading import load_run
from itune.runs.files import ADAPTER_DIR, EXPORT_CARD_FILE, EXPORT_TEMPLATE_FILE, MANIFEST_FILE, METRICS_FILE
from itune.runs.lineage import lineage
from itune.runs.read import read_json, run_config, saved_template
from itune.runs.write import honour_umask

log = logging.getLogger(__name__)


def _lit(text: str) -> str:
    """A Jinja string literal for `text` (JSON escapes are valid Jinja escapes)."""
    return json.dumps(text, ensure_ascii=True)


def chat_template(template: Template) -> str:
    """A Jinja chat template that renders like `template.render` (for `tokenizer.apply_chat_template`).

    Raises:
        TypeError: for a template class this function does not know how to translate.
    """
    system = ""
    if template.system_prompt is not None:  # the default system turn, when a conversation has none
        turn = f"{{'role': 'system', 'content': {_lit(template.system_prompt)}}}"
        system = (
            "{% if messages[0]['role'] != 'system' %}"
            f"{{% set messages = [{turn}] + messages %}}"
            "{% endif %}"
        )
    if isinstance(template, TokenizerTemplate):
        return system + template.chat_template
    if not isinstance(template, RoleTemplate):
        raise TypeError(f"cannot export a chat_template for {type(template).__name__}")
    parts = [system, "{{ " + _lit(template.bos) + " }}" if template.bos else ""]
    parts.append("{% for message in messages %}")
    for i, role in enumerate(("system", "user", "assistant")):
        r = template.roles[role]
        parts.append(("{% if" if i == 0 else "{% elif") + f" message['role'] == {_lit(role)} %}}")
        after = r.get("suffix", "") + (template.separator if role == "assistant" else "")
        parts.append(f"{{{{ {_lit(r.get('prefix', ''))} + message['content'] + {_lit(after)} }}}}")
    parts.append("{% endif %}{% endfor %}")
    parts.append(
        "{% if add_generation_prompt %}{{ " + _lit(template.roles["assistant"].get("prefix", "")) + " }}"
        "{% endif %}"
    )
    return "".join(parts)


def model_card(
    run_dir: Path, cfg: DictConfig, template: dict[str, Any], merged: bool, out: Path, scale: float = 1.0
) -> str:
    """README.md of an exported model: how to load it, and the lineage of the run it came from."""
    metrics = read_json(run_dir, METRICS_FILE)
    shown = {
        k: v for k, v in metrics.items() if k.split("/")[0] in ("train", "val", "eval", "gain", "forgetting")
    }
    rows = "\n".join(f"| `{k}` | {v:.4g} |" for k, v in shown.items() if isinstance(v, int | float))
    found = lineage(run_dir, cfg, template)
    rows_of_lineage = {
        "base model": found["base_model"],
        "base model revision": found["base_model_revision"],
        "peft": "merged into the base weights" if merged else ("adapter" if cfg.get("peft") else "none"),
        "data manifest hash": found["data_manifest_hash"] or f"(no {MANIFEST_FILE} in the run)",
        "template": template["name"],
        "template fingerprint": template["fingerprint"],
        "run directory": found["run_dir"],
        "interpolation scale": f"{scale:g} (base + scale * (tuned - base))"
        if scale != 1
        else "1 (as trained)",
        "itune version": found["version"],
    }
    lines = "\n".join(f"| {k} | `{v}` |" for k, v in rows_of_lineage.items())
    config = OmegaConf.to_yaml(cfg)
    return f"""---
library_name: transformers
tags: [itune, instruction-tuned]
---
# {out.name}

Instruction-tuned with [itune](https://github.com/) from `{cfg.model.get("name")}`.
The tokenizer's `chat_template` renders exactly the prompt format the model was trained with
(template `{template["name"]}`); generation stops at the template's end-of-turn token
(`generation_config.json`).

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("{out.name}")
model = AutoModelForCausalLM.from_pretrained("{out.name}")
messages = [{{"role": "user", "content": "Hello"}}]
inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=64)
print(tok.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

## Lineage

| | |
|---|---|
{lines}

## Metrics

| metric | value |
|---|---|
{rows}

## Template

Trained on: {template["mask_policy"]}.

```
{template["example"]}
```

## Training config

```yaml
{config}```
"""


def base_model_id(cfg: DictConfig, saved: str | None = None) -> str | None:
    """What an adapter's `base_model_name_or_path` should name: the hub id or directory the run loaded.

    The run's `model.lm.name_or_path` when its loader takes one; else `saved` (what peft recorded from the
    loaded model, e.g. a local directory); else the run's `model.name`.

    >>> base_model_id(OmegaConf.create({"model": {"name": "itune/tiny-llama", "lm": {}}}))
    'itune/tiny-llama'
    """
    lm = cfg.model.get("lm") or {}
    return lm.get("name_or_path") or saved or cfg.model.get("name")


def _name_adapter_base(model: Any, cfg: DictConfig) -> None:
    """Fill `base_model_name_or_path` of each peft config of `model` (the adapter's pointer to its base)."""
    lm = cfg.model.get("lm") or {}
    for peft_config in model.peft_config.values():
        peft_config.base_model_name_or_path = base_model_id(cfg, peft_config.base_model_name_or_path)
        if lm.get("revision") and not peft_config.revision:
            peft_config.revision = lm.get("revision")


def export_kind(run_dir: Path, merge: bool) -> str:
    """What an export of `run_dir` holds: `LoRA merged into the base`, `LoRA adapter` or `full model`."""
    if not (run_dir / ADAPTER_DIR).is_dir():
        return "full model"
    return "LoRA merged into the base" if merge else "LoRA adapter"


def export_run(
    run_dir: str | Path,
    out: str | Path,
    merge: bool = True,
    allow_template_mismatch: bool = False,
    template_override_cfg: DictConfig | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
    scale: float = 1.0,
) -> Path:
    """Write a run as a standard model directory (see the module docstring); returns its path.

    Args:
        run_dir: a directory written by itune-train.
        out: the directory to write (must not exist unless `overwrite`).
        merge: merge a LoRA adapter into the base weights; False writes the adapter alone (peft format).
        allow_template_mismatch, template_override_cfg: as in `itune.inference.loading.load_run`.
        dtype: torch dtype name of the written weights; None keeps the run's.
        overwrite: replace an existing `out`.
        scale: WiSE-FT: export base + scale * (tuned - base) (`itune.inference.interpolate.interpolate_model`;
            a LoRA adapter stays an adapter with `merge=false`); 1 exports the weights as trained.
    """
    run_dir, out = Path(run_dir), Path(out)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists; choose another out=... or set overwrite=true")
        shutil.rmtree(out)
    model, tokenizer, template = load_run(
        run_dir, allow_template_mismatch, template_override_cfg, merged=merge and scale == 1, dtype=dtype
    )
    cfg = run_config(run_dir)
    if scale != 1:
        model = interpolate_model(model, scale, lambda: instantiate(cfg.model.lm), merge)
    tokenizer.chat_template = chat_template(template)
    stop = template.stop_token_ids
    model.generation_config = GenerationConfig(
        eos_token_id=stop if len(stop) > 1 else stop[0],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    adapter_only = hasattr(model, "peft_config")
    if adapter_only:  # the adapter must name its base model for peft/transformers to load it
        _name_adapter_base(model, cfg)
    model.save_pretrained(out, safe_serialization=True)
    honour_umask(out)
    if adapter_only:  # peft does not save the generation config: save it beside the adapter
        model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    saved = saved_template(run_dir)
    (out / EXPORT_TEMPLATE_FILE).write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")
    kind = export_kind(run_dir, merge)
    card = model_card(run_dir, cfg, saved, kind == "LoRA merged into the base", out, scale)
    (out / EXPORT_CARD_FILE).write_text(card, encoding="utf-8")
    log.info("exported %s → %s (%s, scale %g)", run_dir, out, kind, scale)
    return out


def run_export(cfg: DictConfig) -> Path:
    """itune-export: `export_run` with the keys of conf/export.yaml."""
    if not cfg.get("run"):
        raise ValueError("set run=<run directory> (a directory written by itune-train)")
    out = cfg.get("out") or str(Path(cfg.run) / ("export_merged" if cfg.merge else "export_adapter"))
    return export_run(
        cfg.run,
        out,
        merge=cfg.merge,
        allow_template_mismatch=cfg.allow_template_mismatch,
        template_override_cfg=cfg.get("template"),
        dtype=cfg.get("dtype"),
        overwrite=cfg.overwrite,
        scale=float(cfg.get("scale", 1.0)),
    )
