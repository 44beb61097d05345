"""Data files shipped with itune (the demo sets); `${itune_resource:demo/finance.jsonl}` in configs."""

from __future__ import annotations

from importlib.resources import files


def resource_path(name: str) -> str:
    """Absolute path of a file shipped in itune/resources; FileNotFoundError naming what exists."""
    path = files(__name__).joinpath(name)
    if not path.is_file():
        raise FileNotFoundError(f"itune resource {name!r} not found under {files(__name__)}")
    return str(path)
