"""`--help` that lists a team's options: `hydra.searchpath=[...]` on the command line, seen at start-up.

Hydra applies a command-line `hydra.searchpath` when it composes, but its `--help` lists the groups of
the search path it started with. Registering the same paths as a search-path plugin before Hydra starts
makes `itune-train hydra.searchpath=[pkg://acme_presets] --help` list the team's options too.
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin

PROVIDER = "itune-command-line"


def searchpath_from_argv(argv: list[str]) -> list[str]:
    """The paths of a `hydra.searchpath=[...]` argument, or [] (unparsable arguments are left to Hydra).

    >>> searchpath_from_argv(["--help", "hydra.searchpath=[pkg://acme_presets,file:///x]"])
    ['pkg://acme_presets', 'file:///x']
    """
    for arg in argv:
        if arg.startswith("hydra.searchpath="):
            try:
                value = OverridesParser.create().parse_override(arg).value()
            except Exception:  # Hydra reports a malformed override itself
                return []
            return [str(v) for v in value] if isinstance(value, list) else []
    return []


def register_argv_searchpath(argv: list[str]) -> None:
    """Add the command line's `hydra.searchpath` entries to Hydra's start-up search path."""
    paths = searchpath_from_argv(argv)
    if not paths:
        return

    class CommandLineSearchPath(SearchPathPlugin):
        def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
            for path in paths:
                search_path.append(provider=PROVIDER, path=path)

    Plugins.instance().register(CommandLineSearchPath)
