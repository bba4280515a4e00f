"""The files a run writes about itself, with or without MLflow: figures and ``clients.csv``.

:class:`RunOutputs` is a run callback (:class:`fsjax.callbacks.Callback`),
added by :func:`fsjax.runs.run_in_dir` before the MLflow tracker, which only
uploads what it finds. At the end of a run, and on an error or Ctrl-C after at
least one round, it writes into the run directory:

- ``figures/*.png``: the standard figures (:func:`fsjax.plots.save_run_figures`);
- ``clients.csv``: one row per client (:func:`client_table`): training
  examples, rounds participated (update used), rounds selected and rounds
  available (where the selector counts them), the selector's availability
  estimate (where it keeps one), cumulative utility and its normalised value
  (1 = the fleet's mean), final accuracy and loss.

Example:
  >>> import numpy as np
  >>> rows = client_table({"participation": np.array([2, 0]), "cum_utility": np.array([3.0, 1.0]),
  ...                      "accuracy": np.array([0.5, 0.25])})
  >>> rows[0], rows[1]
  (['client', 'participation', 'cum_utility', 'utility_normalised', 'accuracy'], ['0', '2', '3.0', '1.5', '0.5'])
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
COLUMNS = ("num_examples", "participation", "selected", "available", "availability_estimate",
           "cum_utility", "utility_normalised", "accuracy", "loss")


def client_arrays(sim: Any, state: Any) -> dict[str, np.ndarray]:
    """Per-client arrays of a round state: what the round keeps and what the selector counts."""
    out = {}
    for name in ("participation", "cum_utility", "accuracy", "loss"):
        if hasattr(state, name):
            out[name] = np.asarray(getattr(state, name))
    data = getattr(sim, "data", None)
    if data is not None and hasattr(data, "n"):
        out["num_examples"] = np.asarray(data.n)
    sel = getattr(state, "select_state", None)
    if all(hasattr(sel, f) for f in ("rounds", "available", "selected")):
        out["selected"] = np.asarray(sel.selected)
        out["available"] = np.asarray(sel.available)
        # The selectors' own estimate (fsjax.selection.availability_estimate).
        out["availability_estimate"] = (out["available"] + 1.0) / (float(sel.rounds) + 2.0)
    return out


def client_table(clients: Mapping[str, Any]) -> list[list[str]]:
    """Rows of ``clients.csv`` (header first) from per-client arrays."""
    cols = {k: np.asarray(v) for k, v in clients.items() if k in COLUMNS}
    if "cum_utility" in cols:
        u = cols["cum_utility"].astype(np.float64)
        cols["utility_normalised"] = u / u.mean() if u.mean() > 0 else np.zeros_like(u)
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
