"""The files a run writes about itself, with or without MLflow: figures and ``clients.csv``.

:class:`RunOutputs` is a run callback (:class:`fsjax.callbacks.Callback`),
added by :func:`fsjax.runs.run_in_dir` before the MLflow tracker, which only
uploads what it finds. At the end of a run, and on an error or Ctrl-C after at
least one round, it writes into the run directory:

- ``figures/*.png``: the standard figures (:func:`fsjax.plots.save_run_figures`);
- ``clients.csv``: one row per client (:func:`client_table`): training
  examples, rounds available (A), selected (S, available or not) and
  participated (P = A S, update used), the availability estimate pi = A / T,
  participation debt T - P, utility u_k (increments credited on participation,
  REFERENCE B.1 step 8) and its normalised value u_k / pi_k (empty where
  pi_k = 0), fsjax's older cumulative accuracy, final accuracy and loss.

Example:
  >>> import numpy as np
  >>> rows = client_table({"participation": np.array([2, 0]), "utility": np.array([0.3, 0.0]),
  ...                      "accuracy": np.array([0.5, 0.25])})
  >>> rows[0], rows[1]
  (['client', 'participation', 'utility', 'accuracy'], ['0', '2', '0.3', '0.5'])
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fsjax.callbacks import Callback, append_metrics
from fsjax.files import atomic_write

log = logging.getLogger(__name__)

CLIENTS_CSV = "clients.csv"
FIGURES = "figures"
# Column order of clients.csv (those a run has).
COLUMNS = ("num_examples", "available", "selected", "participation", "availability", "debt",
           "utility", "normalised_utility", "cum_accuracy", "accuracy", "loss")


def client_arrays(sim: Any, state: Any) -> dict[str, np.ndarray]:
    """Per-client arrays of a round state (REFERENCE B.1): A, S and P counts, the
    availability estimate pi = A / T, debt = T - P, utility u_k and u_k / pi_k."""
    ledger = getattr(state, "ledger", None)
    fields = dict(available="available", selected="selected", participation="participated",
                  utility="utility", cum_accuracy="cum_accuracy")
    out = {col: np.asarray(getattr(ledger, f)) for col, f in fields.items()
           if hasattr(ledger, f)}
    out.update({f: np.asarray(getattr(state, f)) for f in ("accuracy", "loss")
                if hasattr(state, f)})
    data = getattr(sim, "data", None)
    if data is not None and hasattr(data, "n"):
        out["num_examples"] = np.asarray(data.n)
    rounds = int(getattr(state, "round", 0))
    if "available" in out and rounds > 0:
        pi = out["available"] / float(rounds)
        out["availability"] = pi
        if "utility" in out:
            with np.errstate(divide="ignore", invalid="ignore"):
                out["normalised_utility"] = np.where(pi > 0, out["utility"] / pi, np.nan)
    if "participation" in out:
        out["debt"] = rounds - out["participation"]
    return out


def client_table(clients: Mapping[str, Any]) -> list[list[str]]:
    """Rows of ``clients.csv`` (header first) from per-client arrays."""
    cols = {k: np.asarray(v) for k, v in clients.items() if k in COLUMNS}
    names = [c for c in COLUMNS if c in cols]
    n = max((len(v) for v in cols.values()), default=0)
    rows = [["client", *names]]
    for i in range(n):
        rows.append([str(i), *(_fmt(cols[c][i]) for c in names)])
    return rows


def _fmt(v) -> str:
    if np.issubdtype(np.asarray(v).dtype, np.integer) or isinstance(v, (bool, np.bool_)):
        return str(int(v))
    return repr(float(v))


def write_outputs(run_dir: str | os.PathLike, metrics: Mapping[str, Any],
                  clients: Mapping[str, Any], title: str = "") -> list[Path]:
    """Writes ``figures/*.png`` and ``clients.csv`` into ``run_dir``; returns the paths."""
    from fsjax import plots

    run_dir = Path(run_dir)
    paths = []
    if clients:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(client_table(clients))
        atomic_write(run_dir / CLIENTS_CSV, buf.getvalue())
        paths.append(run_dir / CLIENTS_CSV)
    if metrics and any(len(v) for v in metrics.values()):
        paths += plots.save_run_figures(metrics, clients, run_dir / FIGURES, title)
    return paths


class RunOutputs(Callback):
    """Writes the run's figures and ``clients.csv`` at the end, and what exists on an error.

    Args:
      run_dir: the run directory.
      history: metrics of the rounds done before a resume.
    """

    def __init__(self, run_dir: str | os.PathLike, history: Mapping[str, Any] | None = None):
        self.run_dir = Path(run_dir)
        self.history = {k: list(v) for k, v in (history or {}).items()}
        self.state = None
        self.paths: list[Path] = []

    def on_round(self, sim, round_index, metrics, state) -> None:
        append_metrics(self.history, metrics)
        self.state = state

    def on_end(self, sim, history) -> None:
        clients = dict(history.clients)
        clients.update(client_arrays(sim, history.state))
        self.paths = write_outputs(self.run_dir, history.metrics, clients, sim.config.name)

    def on_error(self, sim, error) -> None:
        if self.state is None:   # nothing was trained in this session
            return
        try:
            self.paths = write_outputs(self.run_dir, self.history,
                                       client_arrays(sim, self.state), sim.config.name)
            log.info("wrote the outputs of the rounds done to %s", self.run_dir)
        except Exception as err:  # noqa: BLE001 - the original error matters more
            log.warning("could not write the run's outputs: %s", err)
