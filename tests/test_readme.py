"""Every itune command in the README composes as written (issue 13): a README that drifts fails here.

Each `itune-*` line of a ```bash block is parsed like a shell would, its overrides are composed with the
command's root config (a sweep's first point for `-m`), and help/info flags are run for real.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser

from itune.cli.report import positional_dirs_to_override, replace_bounds

ROOT = Path(__file__).resolve().parents[1]
TEAM = ROOT / "scripts" / "team_presets"
# Lines that name the user's own presets (shown as the shape to follow), not ones that ship with itune.
USER_PRESETS = ("data=<your mix>", "data=finance_mix")
FLAGS = ("--help", "--hydra-help", "--info", "--cfg")


def readme_commands() -> list[str]:
    """Every `itune-*` command line of the README's bash blocks, continuation lines joined."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("itune-"):
                lines.append(line.strip())
    return lines


def first_point(overrides: list[str]) -> list[str]:
    """A sweep's overrides reduced to its first point (`a=1,2` → `a=1`; intervals dropped: the sweeper's)."""
    parser = OverridesParser.create()
    out = []
    for text, override in zip(overrides, parser.parse_overrides(overrides), strict=True):
        if not override.is_sweep_override():
            out.append(text)
        elif override.is_discrete_sweep():
            first = next(iter(override.sweep_string_iterator()))
            out.append(f"{override.get_key_element()}={first}")
    return out


def compose_command(line: str) -> None:
    args = shlex.split(line, comments=True)
    # `…` elides a run or sweep directory: any name stands for it
    command, args = args[0].removeprefix("itune-"), [a.replace("…", "x") for a in args[1:] if a != "…"]
    if command == "report":
        args = replace_bounds(positional_dirs_to_override(args))
    overrides = first_point([a for a in args if a != "-m"]) if "-m" in args else args
    with initialize_config_module(config_module="itune.conf", version_base="1.3"):
        cfg = compose(command, overrides=overrides, return_hydra_config=True)
    assert cfg is not None


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command(line, monkeypatch):
    if any(p in line for p in USER_PRESETS):
        pytest.skip("names the user's own preset")
    monkeypatch.syspath_prepend(str(TEAM))  # what `pip install scripts/team_presets` does
    args = shlex.split(line, comments=True)
    if any(a.startswith(FLAGS) for a in args):  # help and info: run the command itself
        module = f"itune.cli.{args[0].removeprefix('itune-')}"
        env = {"PYTHONPATH": str(TEAM), "PATH": "/usr/bin:/bin"}
        done = subprocess.run(
            [sys.executable, "-m", module, *args[1:]], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0 and done.stdout.strip(), done.stderr[-2000:]
        return
    compose_command(line)


def test_readme_has_commands():
    assert len(readme_commands()) > 40
