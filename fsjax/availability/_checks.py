"""Shared helpers of the availability package: argument checks and jitting.

Every factory in :mod:`fsjax.availability` validates its arguments here at the
Python boundary (``ValueError`` messages name the argument, its value and what
was expected) and jits its pure functions with :func:`jitted`.

Example:
  >>> check_num_clients(3), probabilities("p", 0.5, 2).tolist()
  (3, [0.5, 0.5])
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

Array = jax.Array


def jitted(kind: type, *fns):
    """``kind(*(jax.jit(f) for f in fns))``: a part NamedTuple of jitted functions.

    Eager callers then compile once per model instead of once per primitive
    (and per call for lax loops); inside an outer jit each one inlines.

    Args:
      kind: the NamedTuple type (``Availability``, ``Failure``, ...).
      *fns: its fields, in order.

    Returns:
      ``kind`` holding the jitted functions.
    """
    return kind(*(jax.jit(f) for f in fns))


def check_num_clients(num_clients: Any) -> int:
    """``num_clients`` as an int, checked to be >= 1 (bools rejected).

    Raises:
      ValueError: not an integer >= 1.
    """
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ValueError(f"num_clients={num_clients!r}: expected an integer >= 1")
    return int(num_clients)


def probabilities(name: str, value: Any, num_clients: int) -> np.ndarray:
    """A scalar or per-client probability as float32[C], checked to lie in [0, 1].

    Args:
      name: the argument's name, for error messages.
      value: a scalar or a sequence of ``num_clients`` values.
      num_clients: C.

    Returns:
      ``float32[C]``.

    Raises:
      ValueError: not numeric, wrong length, or a value outside [0, 1] (or NaN).
    """
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: expected a probability in [0, 1] or a list of "
                         f"{num_clients} of them") from None
    if arr.ndim == 0:
        arr = np.full((num_clients,), float(arr))
    elif arr.shape != (num_clients,):
        raise ValueError(f"{name} has shape {arr.shape}: expected a scalar or a list of "
                         f"num_clients={num_clients} probabilities")
    bad = ~((arr >= 0.0) & (arr <= 1.0))  # also catches NaN
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}={value!r}: expected probabilities in [0, 1], "
                         f"got {float(arr[i])!r} at client {i}")
    return arr.astype(np.float32)


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (or >= 0 with ``allow_zero``).

    Raises:
      ValueError: not a number, not finite, or out of range.
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    ok = (v >= 0.0) if allow_zero else (v > 0.0)
    if not (ok and math.isfinite(v)):
        expect = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r}: expected a finite number {expect}")
    return v
