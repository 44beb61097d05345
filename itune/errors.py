"""One error format for every command: `itune-<command>: error: <message>`, exit status 2, no traceback.

An error is the user's to fix (a config value, a data file, a run directory) when it is one of itune's own
exception types, an OmegaConf error (a key or interpolation), an OSError (a missing or unreadable file or
model path), or a ValueError/TypeError/KeyError raised by itune's own code. Anything else is a bug and
keeps its traceback; `HYDRA_FULL_ERROR=1` shows the traceback for every error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf.errors import OmegaConfBaseException

_PACKAGE = str(Path(__file__).resolve().parent)
T = TypeVar("T")


def _raised_in_itune(error: BaseException) -> bool:
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE)


def user_cause(error: BaseException) -> BaseException:
    """The error a user should read: Hydra's instantiate wraps the target's own error (the `__cause__`)."""
    from hydra.errors import InstantiationException

    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return error


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is the user's to fix (see the module doc), not a bug."""
    error = user_cause(error)
    if type(error).__module__.startswith("itune") or isinstance(error, OmegaConfBaseException | OSError):
        return True
    return isinstance(error, ValueError | TypeError | KeyError) and _raised_in_itune(error)


def error_line(error: BaseException) -> str:
    """The error's message on one line (continuation lines joined with ' | ').

    >>> error_line(ValueError("data.batch_size=0: must be >= 1\\n  see the README"))
    'data.batch_size=0: must be >= 1 | see the README'
    """
    error = user_cause(error)
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines) or type(error).__name__


def run_command(command: str, fn: Callable[..., T], *args: Any) -> T:
    """Call `fn(*args)`; a user error prints `itune-<command>: error: …` and exits with status 2."""
    try:
        return fn(*args)
    except Exception as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not is_user_error(e):
            raise
        print(f"itune-{command}: error: {error_line(e)}", file=sys.stderr)
        sys.exit(2)
