"""Everything a training run writes into its run directory (called on rank 0 only); names in runs.files."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from itune.runs.files import (
    ADAPTER_DIR,
    CONFIG_FILE,
    HYDRA_CONFIG_FILE,
    HYDRA_DIR,
    HYDRA_HYDRA_FILE,
    HYDRA_OVERRIDES_FILE,
    METRICS_FILE,
    MODEL_DIR,
    SAMPLES_FILE,
    TEMPLATE_FILE,
)

if TYPE_CHECKING:  # itune.data imports the file names from itune.runs: no runtime import back
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from itune.data.templates import Template

REDACTED = "***"
# A key names a secret when one of its words is one of these (hf_token, api_key, WANDB_API_KEY, password);
# the texts of special tokens (eos_token, pad_token, ...) and token counts (max_new_tokens) are not secrets.
_SECRET_WORDS = {"token", "key", "secret", "password", "passwd", "credential", "credentials", "apikey"}
_NOT_SECRET = {f"{t}_token" for t in ("bos", "eos", "pad", "unk", "sep", "cls", "mask")}


def is_secret_key(key: str) -> bool:
    """Whether a config key holds a secret (its words include token, key, secret, password...).

    >>> [is_secret_key(k) for k in ("hf_token", "api_key", "eos_token", "max_new_tokens", "special_tokens")]
    [True, True, False, False, False]
    """
    k = str(key).lower()
    if k in _NOT_SECRET:
        return False
    return bool(set(re.split(r"[^a-z0-9]+", k)) & _SECRET_WORDS)


def redact(value: Any) -> Any:
    """A copy of a nested dict/list with the values of secret keys replaced by `***`."""
    if isinstance(value, dict):
        return {k: REDACTED if is_secret_key(k) and v is not None else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def redact_override(override: str) -> str:
    """`a.hf_token=xyz` → `a.hf_token=***` (command-line overrides as Hydra saves them)."""
    key, sep, _ = override.partition("=")
    last = key.lstrip("+~").split(".")[-1]
    return f"{key}={REDACTED}" if sep and is_secret_key(last) else override


def _redact_hydra_dir(run_dir: Path) -> None:
    """Hydra's own copies of the config and overrides in `<run_dir>/.hydra`, redacted in place."""
    hydra_dir = run_dir / HYDRA_DIR
    for name in (HYDRA_CONFIG_FILE, HYDRA_HYDRA_FILE, HYDRA_OVERRIDES_FILE):
        path = hydra_dir / name
        if not path.is_file():
            continue
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        if name == HYDRA_OVERRIDES_FILE:
            data = [redact_override(o) for o in data]
        else:
            data = redact(data)
            hydra = data.get("hydra") or {}
            overrides = hydra.get("overrides") or {}
            for key in ("task", "hydra"):  # hydra.yaml lists the command-line overrides here
                if isinstance(overrides.get(key), list):
                    overrides[key] = [redact_override(o) for o in overrides[key]]
            job = hydra.get("job") or {}
            if isinstance(job.get("override_dirname"), str):
                job["override_dirname"] = ",".join(
                    redact_override(o) for o in job["override_dirname"].split(",")
                )
        path.write_text(OmegaConf.to_yaml(OmegaConf.create(data)), encoding="utf-8")


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers, with secrets redacted (what is saved and logged)."""
    return redact(OmegaConf.to_container(cfg, resolve=True))


def save_config(run_dir: Path, cfg: DictConfig) -> None:
    """The fully resolved config the run used, secrets redacted (Hydra's `.hydra/` copies too)."""
    text = OmegaConf.to_yaml(OmegaConf.create(resolved_config(cfg)))
    (run_dir / CONFIG_FILE).write_text(text, encoding="utf-8")
    _redact_hydra_dir(run_dir)


def save_template(run_dir: Path, template: Template) -> None:
    """Template text, special tokens, mask policy and fingerprint."""
    _write_json(run_dir / TEMPLATE_FILE, template.to_dict())


def save_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """Flat metrics with the same keys the loggers get."""
    _write_json(run_dir / METRICS_FILE, dict(sorted(metrics.items())))


def save_samples(run_dir: Path, samples: dict[str, Any]) -> None:
    """Generated answers of the eval suites, before and after training."""
    _write_json(run_dir / SAMPLES_FILE, samples)


def new_file_mode() -> int:
    """The permission bits a new file gets under the process umask (0o644 under the usual 022)."""
    mask = os.umask(0)  # the only portable way to read the umask is to set it and put it back
    os.umask(mask)
    return 0o666 & ~mask


def honour_umask(directory: Path) -> None:
    """Give every `*.safetensors` file under `directory` the mode of any other new file.

    safetensors writes its files 0600 (owner only) whatever the umask; a colleague in the same group could
    then read the tokenizer and config of a model directory but not its weights.
    """
    mode = new_file_mode()
    for path in Path(directory).rglob("*.safetensors"):
        path.chmod(mode)


def save_model(
    run_dir: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """The adapter (`adapter/`, peft) or the full model (`model/`) as safetensors, with the tokenizer.

    `state_dict`: the weights to write instead of the model's own, when a strategy shards them (the full
    weights `itune.scale.gather_for_save` gathers; save with `itune.scale.without_wrappers(model)` on).
    """
    target = run_dir / (ADAPTER_DIR if hasattr(model, "peft_config") else MODEL_DIR)
    kwargs = {} if state_dict is None else {"state_dict": state_dict}
    model.save_pretrained(target, safe_serialization=True, **kwargs)
    honour_umask(target)
    tokenizer.save_pretrained(target)
    return target
