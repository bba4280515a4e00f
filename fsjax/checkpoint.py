"""Checkpoints of a run: the RoundState and the metric history, as msgpack.

Written with ``flax.serialization`` (msgpack, no pickle) to a temporary file
in the same directory, then renamed over the old one, so a crash mid-write
never leaves a half-written checkpoint. Restoring needs a template state of
the same structure (``Simulation.init()``); a file that does not decode or does
not match is a ``ValueError``, never silently used.

Example:
  >>> save("run/checkpoint.msgpack", state, history, {})   # doctest: +SKIP
  >>> state, history, test_acc = load("run/checkpoint.msgpack", sim.init())  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from flax import serialization

FORMAT = "fsjax-checkpoint-1"


def save(path: str | os.PathLike, state: Any, history: dict[str, list[float]],
         test_accuracy: dict[int, float]) -> None:
    """Atomically writes ``state`` and the metric history so far to ``path``."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "state": serialization.to_state_dict(state),
        "history": {k: np.asarray(v, np.float64) for k, v in history.items()},
        "test_rounds": np.asarray(list(test_accuracy), np.int64),
        "test_values": np.asarray(list(test_accuracy.values()), np.float64),
    }
    data = serialization.msgpack_serialize(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | os.PathLike, template: Any):
    """Reads a checkpoint written by :func:`save`.

    Args:
      path: the checkpoint file.
      template: a state with the same structure (e.g. ``Simulation.init()``).

    Returns:
      ``(state, history, test_accuracy)``.

    Raises:
      ValueError: missing, corrupt, or not matching ``template``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r}: not found")
    try:
        raw = serialization.msgpack_restore(path.read_bytes())
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError("not an fsjax checkpoint")
        state = serialization.from_state_dict(template, raw["state"])
        _check_like(template, state)
        history = {k: [float(x) for x in v] for k, v in raw["history"].items()}
        test_acc = {int(r): float(v) for r, v in zip(raw["test_rounds"], raw["test_values"])}
    except ValueError as err:
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or does not match this "
                         f"experiment: {err}") from None
    except Exception as err:  # noqa: BLE001 - msgpack raises many types on garbage
        raise ValueError(f"checkpoint {str(path)!r} is corrupt: {type(err).__name__}: {err}"
                         ) from None
    return state, history, test_acc


def _check_like(template, state) -> None:
    import jax

    a, b = jax.tree.leaves(template), jax.tree.leaves(state)
    if len(a) != len(b):
        raise ValueError(f"{len(b)} arrays, expected {len(a)}")
    for x, y in zip(a, b):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape or x.dtype != y.dtype:
            raise ValueError(f"array of shape {y.shape} {y.dtype}, expected {x.shape} {x.dtype}")


class Checkpointer:
    """A simulation callback that saves a checkpoint every ``every`` rounds and at the end.

    Args:
      path: checkpoint file.
      every: rounds between checkpoints (0 = only the last round).
      history: metrics of rounds already done (when resuming).
      test_accuracy: test accuracies already measured (when resuming).
    """

    def __init__(self, path, every: int, history=None, test_accuracy=None):
        self.path = Path(path)
        self.every = every
        self.history = {k: list(v) for k, v in (history or {}).items()}
        self.test_accuracy = dict(test_accuracy or {})

    def on_start(self, sim) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_round(self, sim, round_index, metrics, state) -> None:
        from fsjax.simulation import append_metrics
        append_metrics(self.history, metrics)
        if "test_accuracy" in metrics:
            self.test_accuracy[round_index] = metrics["test_accuracy"]
        last = round_index == sim.config.rounds
        if last or (self.every and round_index % self.every == 0):
            save(self.path, state, self.history, self.test_accuracy)

    def on_end(self, sim, history) -> None: ...

    def on_error(self, sim, error) -> None: ...
