"""`itune-train resume=<run dir>`: continue an interrupted run exactly as it was started.

The command line is rebuilt from the run's own `.hydra/overrides.yaml`, pointed back at its directory
(`hydra.run.dir`) and at its `last.ckpt` (`ckpt_path=last`). New overrides are refused unless
`resume_allow_changes=true`. Whenever a run resumes into a directory that holds an earlier attempt,
`check_resume` refuses a changed data mixture, template or base model before anything trains.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from itune.runs.files import CONFIG_FILE, HYDRA_DIR, HYDRA_OVERRIDES_FILE, MANIFEST_FILE, TEMPLATE_FILE

RESUME_KEY, ALLOW_KEY = "resume", "resume_allow_changes"
_RUN_KEYS = {"run_dir", "hydra.run.dir", "ckpt_path", "optuna_trial", RESUME_KEY, ALLOW_KEY}


class ResumeError(ValueError):
    """A resume that would not continue the same run; the message says what differs and how to proceed."""


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def resume_argv(argv: list[str]) -> list[str]:
    """Rewrite `resume=<dir> [overrides]` into the run's own overrides plus `hydra.run.dir`, `ckpt_path`.

    Other arguments (`--cfg job`, `-m`...) are kept. A user mistake ends the process with one line on stderr.
    A command line already rewritten (Lightning's launcher starts DDP ranks >= 1 with rank 0's) is returned
    as it is.
    """
    overrides = {_key(a): a.split("=", 1)[1] for a in argv if "=" in a and not a.startswith("-")}
    if {"ckpt_path", "hydra.run.dir", ALLOW_KEY} <= overrides.keys():
        return argv
    run = overrides.get(RESUME_KEY)
    if run in (None, "", "null"):
        return argv
    try:
        saved = saved_overrides(Path(run))
    except ResumeError as e:
        _fail(str(e))
    extra = [a for a in argv if "=" in a and not a.startswith("-") and _key(a) not in _RUN_KEYS]
    allow = overrides.get(ALLOW_KEY, "false").lower() == "true"
    if extra and not allow:
        _fail(
            f"resume={run} reuses the run's own overrides; refusing new ones {extra}. "
            f"Add {ALLOW_KEY}=true to apply them anyway (it also allows another mixture, template, model)."
        )
    flags = [a for a in argv if "=" not in a or a.startswith("-")]
    kept = [o for o in saved if _key(o) not in _RUN_KEYS]
    run_path = str(Path(run).resolve())
    return [
        *flags,
        *kept,
        *extra,
        f"hydra.run.dir={_quote(run_path)}",
        "ckpt_path=last",
        f"{RESUME_KEY}={_quote(run_path)}",
        f"{ALLOW_KEY}={str(allow).lower()}",
    ]


def _fail(message: str) -> None:
    print(f"itune-train: error: {message}", file=sys.stderr)
    sys.exit(2)


def saved_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides a run was started with (Hydra's `.hydra/overrides.yaml`)."""
    path = run_dir / HYDRA_DIR / HYDRA_OVERRIDES_FILE
    if not run_dir.is_dir():
        raise ResumeError(f"resume={run_dir}: no such run directory")
    if not path.is_file():
        raise ResumeError(
            f"resume={run_dir}: {path} not found; resume runs started by itune-train, or give "
            "hydra.run.dir=<run dir> ckpt_path=last with the original overrides"
        )
    saved = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    return [str(o) for o in saved]


def previous_attempt(run_dir: Path) -> dict[str, Any]:
    """What an earlier attempt in `run_dir` recorded at its start: mixture hash, template, model config.

    Read before the new attempt overwrites those files; absent files give absent keys.
    """
    found: dict[str, Any] = {}
    manifest, template = run_dir / MANIFEST_FILE, run_dir / TEMPLATE_FILE
    if manifest.is_file():
        found["mixture_hash"] = json.loads(manifest.read_text(encoding="utf-8")).get("mixture_hash")
    if template.is_file():
        saved = json.loads(template.read_text(encoding="utf-8"))
        found["template"] = (saved.get("name"), saved.get("fingerprint"))
    config = run_dir / CONFIG_FILE
    if config.is_file():
        found["model"] = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("model")
    return found


def check_resume(
    previous: dict[str, Any], mixture_hash: str | None, template: tuple[str, str], model_cfg: dict[str, Any]
) -> None:
    """Refuse to resume with another data mixture, template (name, fingerprint) or base model config.

    Raises:
        ResumeError: naming what changed.
    """
    changed = []
    old_hash = previous.get("mixture_hash")
    if old_hash and mixture_hash and old_hash != mixture_hash:
        changed.append(
            f"data mixture (mixture_hash {old_hash[:12]} → {mixture_hash[:12]}: sources, weights, "
            "filters or seed differ)"
        )
    old_template = previous.get("template")
    if old_template and old_template[1] != template[1]:
        changed.append(f"template ({old_template[0]} → {template[0]})")
    old_model = previous.get("model")
    if old_model is not None and old_model != model_cfg:
        keys = sorted(k for k in set(old_model) | set(model_cfg) if old_model.get(k) != model_cfg.get(k))
        changed.append("model (" + ", ".join(f"model.{k}" for k in keys) + ")")
    if changed:
        raise ResumeError(
            f"resuming with a changed {'; '.join(changed)}: the checkpoint was trained on the earlier "
            "setup. Resume with the original config (itune-train resume=<run dir>), start a new run, or "
            "add resume_allow_changes=true to continue anyway."
        )
