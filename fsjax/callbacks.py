"""Run callbacks: the hooks :func:`fsjax.simulation.run` calls, and the progress bar.

A callback sees the simulation at the start, every round's metrics and state,
the final :class:`~fsjax.simulation.History`, and any error. Tracking (CSV,
MLflow), checkpoints and the progress bar are callbacks; this module holds
their base class and the one helper they share, so none of them imports
:mod:`fsjax.simulation`.

Example:
  >>> history = {}
  >>> append_metrics(history, {"accuracy_mean": 0.5})
  >>> append_metrics(history, {"accuracy_mean": 0.6, "test_accuracy": 0.55})
  >>> history
  {'accuracy_mean': [0.5, 0.6], 'test_accuracy': [nan, 0.55]}
"""

from __future__ import annotations

from typing import Any


class Callback:
    """Hooks called by :func:`fsjax.simulation.run`; override what you need. All are optional.

    ``sim`` is the :class:`~fsjax.simulation.Simulation`, ``state`` its
    ``RoundState`` after the round, ``history`` the run's ``History``.
    """

    def on_start(self, sim: Any) -> None: ...

    def on_round(self, sim: Any, round_index: int, metrics: dict[str, float],
                 state: Any) -> None: ...

    def on_end(self, sim: Any, history: Any) -> None: ...

    def on_error(self, sim: Any, error: BaseException) -> None: ...


def append_metrics(history: dict[str, list[float]], row: dict[str, float]) -> None:
    """Appends one round's metrics, keeping every list one entry per round.

    A metric missing from a round (``test_accuracy`` is only measured on some
    rounds) is NaN there, so ``history[k][r]`` is always round r+1.

    Args:
      history: ``{metric: [value per round]}``, changed in place.
      row: this round's ``{metric: value}``.
    """
    done = max((len(v) for v in history.values()), default=0)
    for k in row:
        history.setdefault(k, [float("nan")] * done)
    for k, values in history.items():
        values.append(row.get(k, float("nan")))


class ProgressBar(Callback):
    """A tqdm bar over rounds showing mean accuracy and the accuracy Jain index."""

    def __init__(self, disable: bool = False):
        self.disable = disable
        self.bar = None

    def on_start(self, sim) -> None:
        from tqdm.auto import tqdm
        self.bar = tqdm(total=sim.config.rounds, desc=sim.config.name, unit="round",
                        disable=self.disable, mininterval=0.5)

    def on_round(self, sim, round_index, metrics, state) -> None:
        if self.bar is None:
            return
        if self.bar.n == 0 and round_index > 1:   # resumed run
            self.bar.update(round_index - 1)
        self.bar.set_postfix(acc=f"{metrics['accuracy_mean']:.3f}",
                             jain=f"{metrics['accuracy_jain']:.3f}", refresh=False)
        self.bar.update(1)

    def on_end(self, sim, history) -> None:
        if self.bar is not None:
            self.bar.close()

    def on_error(self, sim, error) -> None:
        self.on_end(sim, None)
