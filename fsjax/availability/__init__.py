"""Client availability models and the failure rule for selected clients.

An availability model is an :class:`Availability` ``(init, step)`` pair of pure
functions: ``init(key) -> state`` and ``step(state, key) -> (state, available)``
with ``available: bool[C]``, stepped once per round inside ``jax.jit``. Factories
close over their hyperparameters and are built from config as
``REGISTRY[name](num_clients=C, **params)`` (plus ``label_hist=`` the clients'
``[C, L]`` label counts, for factories that take it); failure rules likewise as
``FAILURES[name](num_clients=C, **params)``. The registries are the only
dispatch: a new model is one factory in its module, one line here, its tests.

Layout (every name is re-exported here, so ``fsjax.availability.X`` works):

- :mod:`~fsjax.availability.models`: the :class:`Availability` type and the
  stochastic models ``always``, ``bernoulli(p)``, ``markov(p_drop, p_return)``.
- :mod:`~fsjax.availability.device_traces`: trace-file parsing (:func:`load_traces`,
  :class:`TraceInfo`, ``TRACE_FLAGS``) and the ``traces(path | matrix)`` model
  replaying real devices (``start``: random per seed or a slot; ``assign``:
  identity or random devices and offsets for C > D).
- :mod:`~fsjax.availability.study_events`: the CUP study's event-indexed trace
  parsing, ``traces(rule="study_events")`` (:func:`load_study_events`).
- :mod:`~fsjax.availability.minority`: ``minority_dropout(label_hist, p,
  factor)``, the study's minority-class dropout (availability probability
  scaled for clients holding a minority class).
- :mod:`~fsjax.availability.correlation`: ``correlated(base, threshold)``, a base
  model whose strongly correlated clients drop out together
  (:func:`correlation_groups`).
- :mod:`~fsjax.availability.failures`: :class:`Failure` ``(init, draw, judge,
  fails)`` for the K selected clients of a round; :func:`failure_rule`
  (``"latency_loss"``, fsjax's own option: latency above a threshold or loss at
  or above one; the CUP study's live loop uses no failure rule) and
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
from fsjax.availability.device_traces import (ASSIGN, STUDY_EVENTS, TRACE_FLAGS, TraceInfo,
                                              TraceState, assign_traces, load_traces, trace_step,
                                              traces)
from fsjax.availability.failures import (Failure, LatencyState, failure_rule, make_failure,
                                         no_failures)
from fsjax.availability.minority import minority_classes_of, minority_clients, minority_dropout
from fsjax.availability.models import (Availability, CounterState, MarkovState, always,
                                       bernoulli, markov)
from fsjax.availability.study_events import event_bits, load_study_events, study_length

REGISTRY: dict[str, Callable[..., Availability]] = {
    "always": always,
    "bernoulli": bernoulli,
    "markov": markov,
    "traces": traces,
    "correlated": correlated,
    "minority_dropout": minority_dropout,
}

FAILURES: dict[str, Callable[..., Failure]] = {
    "none": no_failures,
    "latency_loss": failure_rule,   # fsjax's own rule (was "study"; the CUP study has none)
}

__all__ = [
    "ASSIGN", "FAILURES", "REGISTRY", "STUDY_EVENTS", "TRACE_FLAGS", "Array", "Availability",
    "CorrelatedState", "CounterState", "Failure", "LatencyState", "MarkovState", "TraceInfo",
    "TraceState", "always", "assign_traces", "bernoulli", "correlated", "correlation_groups",
    "event_bits", "failure_rule", "load_study_events", "load_traces", "make_failure", "markov",
    "minority_classes_of", "minority_clients", "minority_dropout", "no_failures", "study_length",
    "trace_step", "traces",
]
