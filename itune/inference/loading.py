"""Load a model for inference or eval: a trained run (with the template it was trained with) or a base model.

Every loader of a run directory (itune-generate, itune-chat, itune-export, itune-eval) goes through
`load_run`, which rebuilds the template from the run's config and refuses one whose fingerprint differs
from the run's template.json, unless told otherwise: a template that deviates from the training template
is a common cause of a deployed model misbehaving.

Example:
    >>> model, tokenizer, template = load_run("outputs/2026-01-01/12-00-00")  # doctest: +SKIP
    >>> model, tokenizer, template = load_base(cfg.model, cfg.template)       # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import json
import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from itune.data.templates import Template
from itune.runs.files import MODEL_DIR
from itune.runs.read import artifacts_dir, run_config, saved_template

log = logging.getLogger(__name__)


class TemplateMismatchError(ValueError):
    """The template asked for differs from the one a run was trained with."""


def check_template(template: Template, saved: dict[str, Any], run_dir: str | Path, allow: bool) -> None:
    """Raise TemplateMismatchError (name, fingerprint, a diff of the specs) unless the fingerprints match.

    Args:
        template: the template about to be used.
        saved: the run's template.json.
        run_dir: shown in the message.
        allow: log a warning instead of raising.
    """
    if template.fingerprint == saved["fingerprint"]:
        return
    ours = json.dumps(template.spec(), indent=2, sort_keys=True).splitlines()
    theirs = json.dumps(saved["spec"], indent=2, sort_keys=True).splitlines()
    diff = "\n".join(difflib.unified_diff(theirs, ours, "trained with", "requested", lineterm="", n=1))
    if not diff:
        diff = "(same spec text: the tokenizer encodes it differently, e.g. another vocabulary)"
    message = (
        f"template mismatch for run {run_dir}:\n"
        f"  trained with: {saved['name']!r} fingerprint {saved['fingerprint'][:16]}…\n"
        f"  requested:    {template.name!r} fingerprint {template.fingerprint[:16]}…\n{diff}\n"
        "Drop the template override to use the run's own template, or set allow_template_mismatch=true "
        "to use this one anyway (answers may then differ from what the model learned)."
    )
    if not allow:
        raise TemplateMismatchError(message)
    log.warning("%s", message)


def load_run(
    run_dir: str | Path,
    allow_template_mismatch: bool = False,
    template_override_cfg: DictConfig | dict[str, Any] | None = None,
    merged: bool = False,
    dtype: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Template]:
    """The tuned model, its tokenizer and its template from a run directory, in eval mode.

    The base model is built from the run's `model` config node and the adapter (`adapter/`) loaded onto it
    with peft, or the full model is loaded from `model/`. The tokenizer is the one saved with the weights.
    The template is rebuilt from the run's config (or `template_override_cfg`) and its fingerprint must
    equal template.json's.

    Args:
        run_dir: a directory written by itune-train.
        allow_template_mismatch: warn instead of raising when the fingerprints differ.
        template_override_cfg: a `template` config node to use instead of the run's (checked all the same).
        merged: merge a LoRA adapter into the base weights (faster inference; a plain transformers model).
        dtype: torch dtype name for the weights (`float32`, `bfloat16`); None keeps the run's.

    Returns:
        (model, tokenizer, template).

    Raises:
        TemplateMismatchError: the template differs from the training template (see `check_template`).
        FileNotFoundError: not a (finished) run directory.
    """
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    saved = saved_template(run_dir)
    weights = artifacts_dir(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(weights)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    template = instantiate(template_override_cfg or cfg.template, tokenizer=tokenizer)
    check_template(template, saved, run_dir, allow_template_mismatch)

    if weights.name == MODEL_DIR:
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=dtype or "auto")
    else:
        from peft import PeftModel

        lm = cfg.model.lm
        if dtype is not None and "dtype" in lm:
            lm = OmegaConf.merge(lm, {"dtype": dtype})
        model = PeftModel.from_pretrained(instantiate(lm), weights)
        if merged:
            model = model.merge_and_unload()
    log.info("loaded %s (%s, template %s)", run_dir, weights.name, template.name)
    return model.eval(), tokenizer, template


def load_base(
    model_cfg: DictConfig, template_cfg: DictConfig | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Template]:
    """A bare base model, its tokenizer and a template from `model` and `template` config nodes.

    Raises:
        ValueError: when no template is given (a base model has no saved template to fall back on).
    """
    if model_cfg is None or template_cfg is None:
        raise ValueError(
            "no run directory: pick a base model and a template, e.g. model=smollm2_135m_demo "
            "template=tokenizer (or run=<run dir> to load a trained run with its own template)"
        )
    tokenizer = instantiate(model_cfg.tokenizer)
    template = instantiate(template_cfg, tokenizer=tokenizer)
    return instantiate(model_cfg.lm).eval(), tokenizer, template


def load_model(
    cfg: DictConfig, merged: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Template]:
    """What the inference commands load from their config: `run` (a run directory) or `model` + `template`.

    With `run` set, a `template` given on the command line is an override that must match the run's
    template unless `allow_template_mismatch` is true.
    """
    if cfg.get("run"):
        return load_run(
            cfg.run,
            allow_template_mismatch=bool(cfg.get("allow_template_mismatch", False)),
            template_override_cfg=cfg.get("template"),
            merged=merged,
            dtype=cfg.get("dtype"),
        )
    return load_base(cfg.get("model"), cfg.get("template"))
