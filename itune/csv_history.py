"""A CSV logger that keeps the history of a resumed run (Lightning's own deletes `metrics.csv` on start).

A run resumed from step S (`ckpt_path`) keeps the rows its interrupted attempts logged before S, drops the
ones at S or later (those steps are trained again) and appends the new rows: `csv/metrics.csv` reads as
one run. A run that does not resume starts a fresh file, as with Lightning's logger.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only


class _HistoryWriter(ExperimentWriter):
    """Lightning's CSV writer, with the rows of an earlier attempt read back before the file is reset."""

    def __init__(self, log_dir: str) -> None:
        path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        history = _read_rows(path + ".previous") + _read_rows(path)  # attempts before this one, in order
        if history:
            _write_rows(path + ".previous", history)  # Lightning's writer deletes metrics.csv
        if os.path.isfile(path):
            os.remove(path)
        super().__init__(log_dir)
        self.history = history

    def resumed_at(self, step: int) -> None:
        """Keep only the earlier attempt's rows logged before `step`, ahead of this attempt's rows."""
        self.history = [r for r in self.history if int(float(r.get("step", 0))) < step]
        self.save_history()

    def save_history(self) -> None:
        """Rewrite the file as the kept history followed by the rows this attempt has saved so far."""
        rows = self.history + _read_rows(self.metrics_file_path)
        if rows:
            self.metrics_keys = sorted(set(self.metrics_keys).union(*rows))
            _write_rows(self.metrics_file_path, rows, self.metrics_keys)
        self.history = []
        if os.path.isfile(self.metrics_file_path + ".previous"):
            os.remove(self.metrics_file_path + ".previous")


def _read_rows(path: str) -> list[dict[str, Any]]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def _write_rows(path: str, rows: list[dict[str, Any]], keys: list[str] | None = None) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys or sorted(set().union(*rows)))
        writer.writeheader()
        writer.writerows(rows)


class CSVLogger(LightningCSVLogger):
    """`lightning.pytorch.loggers.CSVLogger` whose `metrics.csv` survives a resume (see module doc)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _HistoryWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(log_dir=self.log_dir)
        return self._experiment  # type: ignore[return-value]

    def resumed_at(self, step: int) -> None:
        """Called when training resumes at `step` (itune.resume.ResumeState)."""
        self.experiment.resumed_at(step)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        previous = os.path.join(self.log_dir, _HistoryWriter.NAME_METRICS_FILE + ".previous")
        if os.path.isfile(previous):  # not a resume: a fresh file, as with Lightning's logger
            os.remove(previous)
