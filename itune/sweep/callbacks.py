"""Hydra callback of itune-train multiruns: check the config before launching, summarise the sweep after.

`on_multirun_end` writes `summary.md` and `summary.json` into the sweep directory (every job with its
status, swept overrides, key metrics and error) and, when a job failed, logs them and exits with status 1
after all jobs ran. Hydra turns exceptions raised by callbacks into warnings, so both hooks end the
process with SystemExit (which it lets through). Configured in train.yaml under `hydra.callbacks`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from itune.sweep.report import build_report, collect_runs, table_rows, to_markdown

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """Args:
    check: validate the sweep's base config (itune.config_schema.check_config) before any job starts.
    fail_on_error: exit non-zero at the end of a sweep in which a job failed.
    """

    def __init__(self, check: bool = True, fail_on_error: bool = True) -> None:
        self.check, self.fail_on_error = check, fail_on_error

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.check:
            from itune.config_schema import ConfigSchemaError, check_config

            try:
                check_config(config)
            except ConfigSchemaError as e:
                log.error("%s", e)
                raise SystemExit(1) from e  # before any job starts

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        try:
            report = build_report(collect_runs([sweep_dir]))
        except FileNotFoundError:
            return
        (sweep_dir / "summary.md").write_text(to_markdown(report), encoding="utf-8")
        summary = {"counts": report.counts(), "recommended": report.recommended, "jobs": table_rows(report)}
        (sweep_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        log.info("sweep summary: %s (itune-report %s for plots)", sweep_dir / "summary.md", sweep_dir)
        failed = [r for r in report.runs if r.status == "failed"]
        if failed and self.fail_on_error:
            lines = "\n".join(f"  {r.name}: {r.error} ({Path(r.path) / 'error.txt'})" for r in failed)
            log.error(
                "%d of %d jobs failed; the others ran. Summary: %s\n%s",
                len(failed),
                len(report.runs),
                sweep_dir / "summary.md",
                lines,
            )
            raise SystemExit(1)
