"""The whole data pipeline on the real public sets in ../shared/data (skipped when absent)."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from itune.data.datamodule import InstructDataModule
from tests.conftest import CONF, SHARED_DATA
from tests.test_templates import build

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (SHARED_DATA / "alpaca_5000.json").exists(), reason="shared data absent"),
]


def accounted(audit: dict, source: str) -> tuple[int, int]:
    """(rows read, rows dropped by some step + rows kept): equal when no row is lost uncounted."""
    s = audit["sources"][source]
    dropped = sum(st["counts"][source]["dropped"] for st in audit["steps"])
    return s["rows_read"], dropped + s["rows_kept"]


def test_real_mix_every_row_is_accounted_for(tokenizer):
    curate = {k: instantiate(v) for k, v in OmegaConf.load(CONF / "curate" / "default.yaml").filters.items()}
    curate["decontaminate"] = instantiate(
        {
            "_target_": "itune.data.curate.Decontaminate",
            "files": [str(SHARED_DATA / "ifeval_input_data.jsonl")],
        }
    )
    sources = {
        "alpaca": {"path": str(SHARED_DATA / "alpaca_5000.json"), "format": "alpaca", "weight": 0.4},
        "dolly": {
            "path": str(SHARED_DATA / "dolly_first6400_no_context.jsonl"),
            "format": "dolly",
            "weight": 0.2,
        },
        "dolly_ctx": {
            "path": str(SHARED_DATA / "dolly_151_with_context.jsonl"),
            "format": "dolly",
            "weight": 0.1,
        },
        "flan": {"path": str(SHARED_DATA / "t0_p3_sample.jsonl"), "format": "flan", "weight": 0.3},
    }
    dm = InstructDataModule(
        sources,
        tokenizer,
        build("chatml", tokenizer),
        curate=curate,
        num_samples=4000,
        max_length=2048,
        on_bad_row="skip",
    )
    dm.setup("fit")
    for name in sources:
        read, counted = accounted(dm.audit, name)
        assert read == counted, name
    assert dm.audit["sources"]["dolly_ctx"]["rows_read"] == 151
    assert dm.audit["sources"]["flan"]["rows_read"] == 2818
    assert len(dm.manifest["train"]) == 4000 and dm.audit["ok"]
    steps = {st["name"]: st["totals"] for st in dm.audit["steps"]}
    assert steps["exact_dedup"]["dropped"] > 0  # the real sets do hold duplicates
    assert steps["pii"]["redacted"] > 0
