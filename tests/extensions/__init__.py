"""A user's extensions of itune, written outside the package: one class and one YAML option each.

`components.py` holds the classes (a curation filter, an eval suite, a prompt template, a loss term) and
`conf/<group>/<option>.yaml` selects each of them. A user adds them with
`hydra.searchpath=[file://<this folder>/conf]` (or `pkg://…` for an installed package) and picks them
like any built-in option: `curate=drop_word eval=word_count template=tags regularizer=l1_adapter`.
"""

from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent / "conf"
