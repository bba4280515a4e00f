"""Checkpoints of a run: the RoundState and the metric history, as msgpack.

Written with ``flax.serialization`` (msgpack, no pickle) through
:func:`fsjax.files.atomic_write`, so a crash mid-write never leaves a
half-written checkpoint. Restoring needs a template of the same structure:
a state (``Simulation.init()``) or, cheaper, its shapes
(``jax.eval_shape(sim.init)``); a file that does not decode or does not match
is a ``ValueError``, never silently used. :class:`Checkpointer` is the
simulation callback that saves one every few rounds.

Example:
  >>> import pathlib, tempfile
  >>> import jax.numpy as jnp
  >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.msgpack"
  >>> state = {"params": jnp.ones(3), "round": jnp.int32(2)}
  >>> save(path, state, {"accuracy_mean": [0.4, 0.5]}, {2: 0.45})
  >>> template = jax.eval_shape(lambda: state)     # shapes only, nothing computed
  >>> restored, history, test_acc = load(path, template)
  >>> restored["params"].tolist(), int(restored["round"]), history, test_acc
  ([1.0, 1.0, 1.0], 2, {'accuracy_mean': [0.4, 0.5]}, {2: 0.45})
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from fsjax.callbacks import Callback, append_metrics
from fsjax.files import atomic_write

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
    atomic_write(path, serialization.msgpack_serialize(payload))


def load(path: str | os.PathLike, template: Any):
    """Reads a checkpoint written by :func:`save`.

    Args:
      path: the checkpoint file.
      template: a state with the same structure, or its shapes: arrays or
        ``jax.ShapeDtypeStruct`` leaves (e.g. ``jax.eval_shape(sim.init)``).

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
    a, b = jax.tree.leaves(template), jax.tree.leaves(state)
    if len(a) != len(b):
        raise ValueError(f"{len(b)} arrays, expected {len(a)}")
    for x, y in zip(a, b):
        # A ShapeDtypeStruct has .shape/.dtype but no data; np.asarray only for scalars.
        x = x if hasattr(x, "shape") and hasattr(x, "dtype") else np.asarray(x)
        y = np.asarray(y)
        if tuple(x.shape) != y.shape or np.dtype(x.dtype) != y.dtype:
            raise ValueError(f"array of shape {y.shape} {y.dtype}, expected {tuple(x.shape)} "
                             f"{np.dtype(x.dtype)}")


class Checkpointer(Callback):
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
        append_metrics(self.history, metrics)
        if "test_accuracy" in metrics:
            self.test_accuracy[round_index] = metrics["test_accuracy"]
        last = round_index == sim.config.rounds
        if last or (self.every and round_index % self.every == 0):
            save(self.path, state, self.history, self.test_accuracy)
