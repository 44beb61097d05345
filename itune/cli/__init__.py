"""Console entry points: thin Hydra shims that call one `run_*`/`train` function each.

Importing any of them first registers a command-line `hydra.searchpath` as a start-up search path, so
`--help` lists a team's preset options too (itune.cli.searchpath).
"""

import sys

import itune.conf  # noqa: F401  (registers the structured-config schemas, e.g. for --info defaults)
from itune.cli.searchpath import register_argv_searchpath

register_argv_searchpath(sys.argv[1:])
