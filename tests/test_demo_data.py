"""The committed demo data is exactly what scripts/make_demo_data.py generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_data_is_reproducible(tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts/make_demo_data.py"), "--out", str(tmp_path)], check=True
    )
    shipped = ROOT / "itune/resources/demo"
    names = sorted(p.name for p in shipped.glob("*.jsonl"))
    assert names == sorted(p.name for p in tmp_path.glob("*.jsonl"))
    for name in names:
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name
