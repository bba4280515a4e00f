"""``fsjax compare``: metric histories of several runs, from MLflow or from run directories.

- :func:`from_mlflow` reads runs by id or by experiment (through
  :func:`fsjax.tracking.fetch_histories`, the only MLflow code); a missing
  SQLite store, an unknown run id or experiment is a ``ValueError`` naming it
  (the store is never created by reading it);
- :func:`from_dirs` reads run directories' ``metrics_log.csv`` (runs made with
  ``--no-track``), labelled by directory name and the config keys that differ;
- :func:`check_metrics` fails naming a metric no run has;
- :func:`table_rows` / :func:`write_csv` / :func:`write_markdown`: one row per
  run with each metric's final value.

Example:
  >>> hists = {"a": {"acc": [0.1, 0.5]}, "b": {"acc": [0.2, float("nan")]}}
  >>> table_rows(hists, ["acc"])
  [['run', 'acc'], ['a', '0.5'], ['b', '0.2']]
  >>> print(markdown(table_rows(hists, ["acc"])))
  | run | acc |
  |---|---|
  | a | 0.5 |
  | b | 0.2 |
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from fsjax import config as config_lib, files

METRICS_LOG = "metrics_log.csv"


def from_mlflow(tracking_uri: str | None, run_ids: Sequence[str] = (),
                experiment: str | None = None, metrics: Sequence[str] = ("accuracy_mean",)
                ) -> dict[str, dict[str, list[float]]]:
    """``{label: {metric: values}}`` of MLflow runs; errors name the store, run or experiment."""
    from fsjax import extras, tracking

    extras.require("track", "fsjax compare (MLflow runs; --dirs reads run directories)")
    uri = tracking.resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ValueError(f"tracking URI {uri!r}: no MLflow store there (the file does not "
                         "exist); give --tracking-uri, or --dirs for --no-track runs")
    if not run_ids and not experiment:
        raise ValueError("fsjax compare: give --runs RUN_ID..., --experiment NAME or --dirs DIR...")
    for rid in run_ids:
        try:
            tracking.fetch_histories(uri, [rid], None, ())
        except Exception as err:  # noqa: BLE001 - MLflow raises its own exception types
            raise ValueError(f"run {rid!r}: not found in {uri!r}") from err
    try:
        return tracking.fetch_histories(uri, list(run_ids), experiment, list(metrics))
    except ValueError as err:
        if experiment and "not found" in str(err):
            raise ValueError(f"experiment {experiment!r}: not found in {uri!r}") from None
        raise


def from_dirs(dirs: Sequence[str | os.PathLike], metrics: Sequence[str] | None = None
              ) -> dict[str, dict[str, list[float]]]:
    """``{label: {metric: values}}`` from run directories' ``metrics_log.csv``.

    Labels are directory names plus the config keys whose values differ
    between the runs (from each ``config.yaml``), as for MLflow runs.
    """
    from fsjax.tracking import read_metrics_csv

    hists, params = {}, {}
    for d in dirs:
        d = Path(d)
        if not (d / METRICS_LOG).is_file():
            raise ValueError(f"--dirs {str(d)!r}: no {METRICS_LOG} there (not a run directory)")
        hist = read_metrics_csv(d / METRICS_LOG)
        hists[str(d)] = hist if metrics is None else {m: hist[m] for m in metrics if m in hist}
        cfg_path = d / "config.yaml"
        params[str(d)] = config_lib.flatten(config_lib.load(cfg_path)) if cfg_path.is_file() else {}
    keys = set().union(*params.values()) if params else set()
    differ = sorted(k for k in keys if len({str(p.get(k)) for p in params.values()}) > 1
                    and k not in ("output_dir", "name"))
    out = {}
    for d, hist in hists.items():
        label = Path(d).name
        if differ:
            label += " [" + ", ".join(f"{k}={params[d].get(k)}" for k in differ) + "]"
        out[label if label not in out else d] = hist
    return out


def check_metrics(hists: Mapping[str, Mapping[str, Sequence[float]]], metrics: Sequence[str]
                  ) -> None:
    """Raises ``ValueError`` naming every metric that no run has a value for."""
    missing = [m for m in metrics
               if not any(any(not math.isnan(v) for v in h.get(m, ())) for h in hists.values())]
    if missing:
        known = sorted(set().union(*(h for h in hists.values())) - set(missing))
        raise ValueError(f"metric {', '.join(map(repr, missing))}: not logged by any of the "
                         f"{len(hists)} runs" + (f" (they have {', '.join(known)})" if known
                                                 else ""))


def _last(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return finite[-1] if finite else float("nan")


def table_rows(hists: Mapping[str, Mapping[str, Sequence[float]]], metrics: Sequence[str]
               ) -> list[list[str]]:
    """Header ``run, <metric>...`` then one row per run with each metric's last finite value."""
    rows = [["run", *metrics]]
    for label, h in hists.items():
        rows.append([label, *(f"{_last(h.get(m, ())):.6g}" for m in metrics)])
    return rows


def markdown(rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table of ``rows`` (header first)."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def write_csv(path: str | os.PathLike, rows: Sequence[Sequence[str]]) -> None:
    """Writes ``rows`` as a CSV file."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    files.atomic_write(path, buf.getvalue())


def write_markdown(path: str | os.PathLike, rows: Sequence[Sequence[str]]) -> None:
    """Writes ``rows`` as a markdown table."""
    files.atomic_write(path, markdown(rows) + "\n")
