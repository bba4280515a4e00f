"""The run's CSV files: ``metrics_log.csv`` (one row per round) and ``final_metrics.csv``.

:class:`CsvLogger` is the callback that keeps both up to date in the run
directory (the file names of the CPP study), with or without MLflow; values
are written as ``repr`` so they read back exactly, through
:func:`fsjax.files.atomic_write`, so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from fsjax.callbacks import Callback, append_metrics
from fsjax.files import atomic_write
from fsjax.metrics import CUP_METRIC_NAMES, METRIC_NAMES

METRICS_LOG = "metrics_log.csv"
FINAL_METRICS = "final_metrics.csv"


def ordered_columns(names) -> list[str]:
    """fsjax's own metrics, then the CUP study's, then the rest alphabetically."""
    names = set(names)
    first = METRIC_NAMES + CUP_METRIC_NAMES
    return [n for n in first if n in names] + sorted(names - set(first))


def _csv_text(rows) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def write_metrics_csv(path: str | os.PathLike, history: Mapping[str, Sequence[float]]) -> None:
    """``round,<metric>...`` with one row per round (values as ``repr``, NaN as ``nan``)."""
    cols = ordered_columns(history)
    rounds = max((len(v) for v in history.values()), default=0)
    rows = [["round", *cols]]
    rows += [[str(r + 1), *(_fmt(history[c][r]) for c in cols)] for r in range(rounds)]
    atomic_write(path, _csv_text(rows))


def write_final_csv(path: str | os.PathLike, history: Mapping[str, Sequence[float]]) -> None:
    """``metric,value`` of the last round (the last finite value for sparse metrics)."""
    rows = [["metric", "value"]]
    for c in ordered_columns(history):
        finite = [v for v in history[c] if not math.isnan(v)]
        rows.append([c, _fmt(finite[-1] if finite else float("nan"))])
    atomic_write(path, _csv_text(rows))


def read_metrics_csv(path: str | os.PathLike) -> dict[str, list[float]]:
    """Reads :func:`write_metrics_csv` output back into ``{metric: values}``.

    Values round-trip exactly (they are written as ``repr``).

    Example:
      >>> import pathlib, tempfile
      >>> path = pathlib.Path(tempfile.mkdtemp()) / METRICS_LOG
      >>> write_metrics_csv(path, {"train_loss": [0.1, float("nan")], "accuracy_mean": [0.5, 2/3]})
      >>> print(path.read_text(), end="")
      round,accuracy_mean,train_loss
      1,0.5,0.1
      2,0.6666666666666666,nan
      >>> read_metrics_csv(path)["accuracy_mean"] == [0.5, 2/3]
      True
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = [c for c in (rows[0] if rows else {}) if c != "round"]
    return {c: [float(r[c]) for r in rows] for c in cols}


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))


class CsvLogger(Callback):
    """Keeps ``metrics_log.csv`` and ``final_metrics.csv`` in ``run_dir`` up to date."""

    def __init__(self, run_dir: str | os.PathLike, history: Mapping[str, Sequence[float]] = None):
        self.run_dir = Path(run_dir)
        self.history = {k: list(v) for k, v in (history or {}).items()}

    def on_start(self, sim) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.history:  # resumed: rounds after the checkpoint are redone
            write_metrics_csv(self.run_dir / METRICS_LOG, self.history)

    def on_round(self, sim, round_index, metrics, state) -> None:
        append_metrics(self.history, metrics)
        write_metrics_csv(self.run_dir / METRICS_LOG, self.history)

    def on_end(self, sim, history) -> None:
        write_final_csv(self.run_dir / FINAL_METRICS, self.history)
