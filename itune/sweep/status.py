"""The status of one job in its run directory: status.json and error.txt.

Statuses: running, completed, failed, interrupted (Ctrl-C, SIGTERM) and pruned (an Optuna trial the pruner
stopped early: `reason`, `step`, `value`; itune.sweep.pruning).
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any

from itune.errors import error_line, is_user_error
from itune.runs.files import ERROR_FILE, STATUS_FILE


def write_status(run_dir: Path, status: str, **fields: Any) -> None:
    """status.json: `status` plus fields (overrides, duration_s, error, objective; pruned: reason, step)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}
    (run_dir / STATUS_FILE).write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


def write_error(run_dir: Path, error: BaseException) -> str:
    """error.txt: the one-line error (as `itune-train` prints it), then the traceback; returns the line.

    A bug (not a user error, itune.errors) keeps its type name in the line.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    line = error_line(error) if is_user_error(error) else f"{type(error).__name__}: {error_line(error)}"
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    (run_dir / ERROR_FILE).write_text(f"{line}\n\n{text}", encoding="utf-8")
    return line


def read_status(run_dir: Path) -> dict[str, Any]:
    """status.json as a dict ({} when absent or unreadable)."""
    path = run_dir / STATUS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}
