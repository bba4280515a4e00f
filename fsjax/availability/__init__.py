"""Client availability models and the failure rule for selected clients.

An availability model is an :class:`Availability` ``(init, step)`` pair of pure
functions: ``init(key) -> state`` and ``step(state, key) -> (state, available)``
with ``available: bool[C]``, stepped once per round inside ``jax.jit``. Factories
close over their hyperparameters and are built from config as
``REGISTRY[name](num_clients=C, **params)``; failure rules likewise as
``FAILURES[name](num_clients=C, **params)``. The registries are the only
dispatch: a new model is one factory in its module, one line here, its tests.

Layout (every name is re-exported here, so ``fsjax.availability.X`` works):

- :mod:`~fsjax.availability.models`: the :class:`Availability` type and the
  stochastic models ``always``, ``bernoulli(p)``, ``markov(p_drop, p_return)``.
- :mod:`~fsjax.availability.device_traces`: trace-file parsing (:func:`load_traces`,
  :class:`TraceInfo`, ``TRACE_FLAGS``) and the ``traces(path | matrix)`` model
  replaying real devices.
- :mod:`~fsjax.availability.correlation`: ``correlated(base, threshold)``, a base
  model whose strongly correlated clients drop out together
  (:func:`correlation_groups`).
- :mod:`~fsjax.availability.failures`: :class:`Failure` ``(init, draw, judge,
  fails)`` for the K selected clients of a round; :func:`failure_rule` (the
  study's rule: latency above a threshold or loss at or above one) and
  :func:`no_failures`.
- ``_checks``: the argument checks and jitting the factories share.

Example:
  >>> import jax
  >>> model = REGISTRY["markov"](num_clients=4, p_drop=0.1, p_return=0.3)
  >>> state = model.init(jax.random.key(0))
  >>> state, available = model.step(state, jax.random.key(1))
  >>> available.shape, available.dtype
  ((4,), dtype('bool'))
"""

from __future__ import annotations

from typing import Callable

from fsjax.availability._checks import Array
from fsjax.availability.correlation import CorrelatedState, correlated, correlation_groups
from fsjax.availability.device_traces import (TRACE_FLAGS, TraceInfo, TraceState, load_traces,
                                              traces)
from fsjax.availability.failures import (Failure, LatencyState, failure_rule, make_failure,
                                         no_failures)
from fsjax.availability.models import (Availability, CounterState, MarkovState, always,
                                       bernoulli, markov)

REGISTRY: dict[str, Callable[..., Availability]] = {
    "always": always,
    "bernoulli": bernoulli,
    "markov": markov,
    "traces": traces,
    "correlated": correlated,
}

FAILURES: dict[str, Callable[..., Failure]] = {
    "none": no_failures,
    "study": failure_rule,
}

__all__ = [
    "FAILURES", "REGISTRY", "TRACE_FLAGS", "Array", "Availability", "CorrelatedState",
    "CounterState", "Failure", "LatencyState", "MarkovState", "TraceInfo", "TraceState", "always",
    "bernoulli", "correlated", "correlation_groups", "failure_rule", "load_traces",
    "make_failure", "markov", "no_failures", "traces",
]
