"""The run's metric logs across interruptions: ``history.jsonl`` and ``metrics.csv`` are appended to
by a resumed run, never rewritten.

A resumed run continues from the step ``s`` of its ``last.ckpt``; whatever the interrupted run
logged after that step is replayed, so :func:`truncate_logs` first drops those rows (validation
rows of ``history.jsonl`` with ``step > s``, ``metrics.csv`` rows with logger step ``>= s``:
Lightning logs optimiser step ``s`` as row step ``s - 1``) and a last line cut off by the kill.
:class:`RunCSVLogger` then appends to ``metrics.csv`` (Lightning's own CSV logger deletes the file
of an existing folder), widening the header when new columns appear.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from terraseg.io.atomic import atomic_write_text

HISTORY = "history.jsonl"
METRICS = "metrics.csv"


def read_history(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The validation rows of ``history.jsonl`` (complete lines only; a line cut off by a kill is skipped)."""
    p = Path(run_dir) / HISTORY
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and complete rows of a CSV file (a last line without its newline is dropped)."""
    with open(path, encoding="utf-8", newline="") as fh:
        text = fh.read()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = [r for r in reader if None not in r and None not in r.values()]
    return list(reader.fieldnames or []), rows


def _write_csv(path: Path, header: list[str], rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=header, restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _step(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("inf")


def truncate_logs(run_dir: str | os.PathLike[str], step: int) -> tuple[int, int]:
    """Drop what an interrupted run logged after optimiser step ``step`` (see the module docstring).

    Returns:
        ``(history rows dropped, metrics.csv rows dropped)``.
    """
    run = Path(run_dir)
    dropped_h = dropped_m = 0
    hp = run / HISTORY
    if hp.is_file():
        lines = hp.read_text(encoding="utf-8").splitlines(keepends=True)
        rows = read_history(run)
        keep = [r for r in rows if _step(r.get("step")) <= step]
        dropped_h = len(rows) - len(keep)
        if dropped_h or len(rows) != sum(1 for ln in lines if ln.strip()) or (lines and not lines[-1].endswith("\n")):
            atomic_write_text(hp, "".join(json.dumps(r) + "\n" for r in keep))
    mp = run / METRICS
    if mp.is_file():
        with open(mp, encoding="utf-8", newline="") as fh:
            raw = fh.read()
        header, rows = _read_csv(mp)
        keep_m = [r for r in rows if _step(r.get("step")) < step]
        dropped_m = len(rows) - len(keep_m)
        if header and (dropped_m or not raw.endswith("\n") or len(rows) != raw.count("\n") - 1):
            _write_csv(mp, header, keep_m)
    return dropped_h, dropped_m


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV experiment writer, appending to an existing ``metrics.csv`` instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        p = Path(self.metrics_file_path)
        if p.is_file():
            header, _ = _read_csv(p)
            self.metrics_keys = sorted(header)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        p = Path(self.metrics_file_path)
        header, rows = _read_csv(p)
        _write_csv(p, sorted(set(header) | set(fieldnames)), rows)


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` writing ``<save_dir>/metrics.csv``, appended to across resumed runs."""

    def __init__(self, save_dir: str | os.PathLike[str], flush_logs_every_n_steps: int = 100) -> None:
        super().__init__(str(save_dir), name="", version="", flush_logs_every_n_steps=flush_logs_every_n_steps)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:  # type: ignore[override]
        if self._experiment is None:
            os.makedirs(self.root_dir or ".", exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


__all__ = ["RunCSVLogger", "read_history", "truncate_logs"]
