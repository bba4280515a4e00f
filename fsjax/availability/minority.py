"""Minority-class dropout: clients holding a minority class are available less often.

The CUP study's ``minority_class_dropout`` availability model
(``server/fairness.py``, ``AvailabilityModel``): every client is available
independently each round with probability ``p`` (0.8), halved for the clients
of a given set of "minority clients". The study's code takes that set as an
argument and never says how it is chosen; **fsjax** derives it from the label
counts the simulation passes in (``label_hist``, ``f32[C, L]``): a client is a
minority client when it holds (count > 0) at least one minority class, and the
minority classes are ``minority_classes`` when given, else the classes whose
population total is below ``minority_threshold`` times the mean class total
(an even split, such as the label ring's, has no minority class; the model
then says so and equals ``bernoulli(p)``).

Example:
  >>> import jax, numpy as np
  >>> hist = np.array([[5, 0], [3, 2], [4, 0]])
  >>> m = minority_dropout(3, hist, p=1.0, factor=0.0, minority_classes=[1])
  >>> m.step(m.init(jax.random.key(0)), jax.random.key(1))[1].tolist()
  [True, False, True]
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fsjax.availability._checks import check_num_clients, jitted, probabilities
from fsjax.availability.models import Availability, CounterState

__all__ = ["minority_classes_of", "minority_clients", "minority_dropout"]

log = logging.getLogger("fsjax.availability")


def _label_hist(label_hist: Any, num_clients: int) -> np.ndarray:
    if label_hist is None:
        raise ValueError("label_hist=None: expected the clients' label counts f32[C, L] "
                         "(the simulation passes them to availability factories that take "
                         "label_hist)")
    try:
        hist = np.asarray(label_hist, np.float64)
    except (TypeError, ValueError):
        raise ValueError("label_hist: expected numeric label counts f32[C, L]") from None
    if hist.ndim != 2 or hist.shape[0] != num_clients or hist.shape[1] < 1:
        raise ValueError(f"label_hist has shape {hist.shape}: expected "
                         f"[num_clients={num_clients}, L >= 1]")
    if not np.all(np.isfinite(hist)) or (hist < 0).any():
        raise ValueError("label_hist: expected finite counts >= 0")
    return hist


def minority_classes_of(label_hist: Any, threshold: float = 0.5) -> np.ndarray:
    """Classes whose total count over all clients is below ``threshold`` x the mean total.

    Args:
      label_hist: ``[C, L]`` label counts.
      threshold: fraction of the mean class total, >= 0.

    Returns:
      ``i32[M]`` class ids, ascending (empty when no class qualifies).

    Example:
      >>> minority_classes_of([[10, 1, 0], [10, 0, 9]]).tolist()   # totals 20, 1, 9; mean 10
      [1]
    """
    hist = np.asarray(label_hist, np.float64)
    totals = hist.sum(axis=0)
    return np.flatnonzero(totals < float(threshold) * totals.mean()).astype(np.int32)


def minority_clients(label_hist: Any, classes: Sequence[int]) -> np.ndarray:
    """``bool[C]``: the clients holding (count > 0) at least one of ``classes``.

    Example:
      >>> minority_clients([[5, 0], [3, 2], [0, 1]], [1]).tolist()
      [False, True, True]
    """
    hist = np.asarray(label_hist)
    idx = np.asarray(list(classes), np.int64)
    if idx.size == 0:
        return np.zeros(hist.shape[0], bool)
    return (hist[:, idx] > 0).any(axis=1)


def minority_dropout(num_clients: int, label_hist: Any = None,
                     p: float | Sequence[float] = 0.8, factor: float = 0.5,
                     minority_classes: Sequence[int] | None = None,
                     minority_threshold: float = 0.5) -> Availability:
    """Independent availability, ``p`` times ``factor`` for clients holding a minority class.

    Each round client k is available with probability ``p_k`` (the study: 0.8),
    or ``factor * p_k`` (the study: 0.5, "halved") when it holds a minority
    class, independently across clients and rounds.

    Args:
      num_clients: number of clients C.
      label_hist: ``[C, L]`` label counts (passed by the simulation).
      p: base probability in [0, 1], scalar or list of C.
      factor: multiplier for minority clients, in [0, 1].
      minority_classes: class ids counted as minority; None = the classes
        below ``minority_threshold`` x the mean class total
        (:func:`minority_classes_of`).
      minority_threshold: see ``minority_classes``; >= 0.

    Returns:
      An :class:`Availability` with :class:`CounterState`.

    Raises:
      ValueError: missing or malformed ``label_hist``, a probability or
        ``factor`` outside [0, 1], a class id outside [0, L), a negative
        ``minority_threshold``.

    Example:
      >>> m = minority_dropout(2, [[1, 0], [0, 1]], p=0.8, minority_classes=[1])
      >>> m.step(m.init(jax.random.key(0)), jax.random.key(1))[1].shape
      (2,)
    """
    c = check_num_clients(num_clients)
    base = probabilities("p", p, c)
    f = float(probabilities("factor", factor, 1)[0])
    try:
        thr = float(minority_threshold)
    except (TypeError, ValueError):
        thr = float("nan")
    if not thr >= 0.0:
        raise ValueError(f"minority_threshold={minority_threshold!r}: expected a number >= 0")
    hist = _label_hist(label_hist, c)
    num_labels = hist.shape[1]
    if minority_classes is None:
        classes = minority_classes_of(hist, thr)
    else:
        try:
            classes = np.asarray(list(minority_classes))
        except TypeError:
            classes = np.asarray([minority_classes])
        if classes.size and (classes.dtype.kind not in "iu" or classes.min() < 0
                             or classes.max() >= num_labels):
            raise ValueError(f"minority_classes={minority_classes!r}: expected class ids in "
                             f"[0, {num_labels})")
    held = minority_clients(hist, classes)
    if not held.any():
        log.warning("minority_dropout: no client holds a minority class (classes %s); "
                    "every client is available with probability p", classes.tolist())
    probs = jnp.asarray(np.where(held, f * base, base).astype(np.float32))

    def init(key):
        del key
        return CounterState(t=jnp.zeros((), jnp.int32))

    def step(state, key):
        return CounterState(t=state.t + 1), jax.random.uniform(key, (c,)) < probs

    return jitted(Availability, init, step)
