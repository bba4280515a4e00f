"""Failures of selected clients: fsjax's latency/packet-loss rule and the trivial one.

A failure rule is a :class:`Failure` ``(init, draw, judge, fails)`` of pure
functions, built from config as ``FAILURES[name](num_clients=C, **params)``:

- ``init(key) -> state``: per-client parameters (e.g. device speed);
- ``draw(state, key, slots: i32[K]) -> latency: f32[K]``: all of a round's
  randomness, independent of training, so a round draws it once for its K slots;
- ``judge(latency, losses) -> failed: bool``: the verdict, elementwise over any
  matching shapes (one slot: a scalar latency and a scalar loss);
- ``fails(state, key, slots, losses) -> (failed: bool[K], latency: f32[K])``:
  ``judge(draw(state, key, slots), losses)`` and the latency, in one call.

Rules: :func:`failure_rule` (``FAILURES["latency_loss"]``, fsjax's own option:
latency above a threshold or loss at or above one, after the study's older
physical-device code; the CUP study's live loop uses no failure rule,
REFERENCE.md B.5) and :func:`no_failures` (``"none"``). :func:`make_failure`
builds a :class:`Failure` from ``init``, ``draw`` and ``judge``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> rule = failure_rule(num_clients=3, latency_client_sigma=0.0, latency_round_sigma=0.0)
  >>> latency = rule.draw(rule.init(jax.random.key(0)), jax.random.key(1), jnp.array([0, 2]))
  >>> latency.tolist(), rule.judge(latency[1], jnp.float32(40.0)).tolist()
  ([30.0, 30.0], True)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from fsjax.availability._checks import Array, check_num_clients, check_positive, jitted

__all__ = ["Failure", "LatencyState", "failure_rule", "make_failure", "no_failures"]


class Failure(NamedTuple):
    """A failure rule for the K selected clients of a round.

    Attributes:
      init: ``init(key) -> state`` (per-client parameters).
      draw: ``draw(state, key, slots: i32[K]) -> latency: f32[K]``; every
        random draw of the round, independent of the losses.
      judge: ``judge(latency, losses) -> failed: bool``, elementwise over
        matching shapes (``f32[K]`` and ``f32[K]``, or scalars for one slot).
      fails: ``fails(state, key, slots: i32[K], losses: f32[K])
        -> (failed: bool[K], latency: f32[K])``, i.e. ``judge`` of ``draw``.
    """

    init: Callable[[Array], Any]
    draw: Callable[[Any, Array, Array], Array]
    judge: Callable[[Array, Array], Array]
    fails: Callable[[Any, Array, Array, Array], tuple[Array, Array]]


def make_failure(init: Callable, draw: Callable, judge: Callable) -> Failure:
    """A :class:`Failure` whose ``fails`` is ``judge`` applied to ``draw``.

    Args:
      init: ``init(key) -> state``.
      draw: ``draw(state, key, slots) -> latency f32[K]``.
      judge: ``judge(latency, losses) -> failed``, elementwise.

    Returns:
      A :class:`Failure` of the four functions, each jitted.

    Example:
      >>> r = make_failure(lambda key: (), lambda s, key, slots: jnp.ones(slots.shape),
      ...                  lambda latency, losses: latency < losses)
      >>> r.fails((), None, jnp.array([0, 1]), jnp.array([0.5, 2.0]))[0].tolist()
      [False, True]
    """

    def fails(state, key, slots, losses):
        latency = draw(state, key, slots)
        return judge(latency, losses), latency

    return jitted(Failure, init, draw, judge, fails)


class LatencyState(NamedTuple):
    """State of :func:`failure_rule`.

    Attributes:
      median: f32[C]  # each client's median round latency (device speed)
    """

    median: Array


def failure_rule(num_clients: int, latency_threshold: float = 90.0, loss_threshold: float = 40.0,
                 *, latency_median: float = 30.0, latency_client_sigma: float = 0.5,
                 latency_round_sigma: float = 0.3) -> Failure:
    """fsjax's latency/loss rule: a selected client fails when it is too slow or diverged.

    Registered as ``FAILURES["latency_loss"]`` (named ``"study"`` before the CUP
    work; the CUP study's live loop has no failure rule).

    Client k fails in a round when its latency ``> latency_threshold`` or its
    local loss ``>= loss_threshold`` (a NaN loss also fails). Latency is
    log-normal at two levels, the usual model of heterogeneous device speed:
    each client's median ``m_k = latency_median * exp(latency_client_sigma * z_k)``
    is drawn once in ``init``, and each round (``draw``)
    ``latency = m_k * exp(latency_round_sigma * e)``, ``z_k, e ~ N(0, 1)``. With the
    defaults about 3% of rounds exceed 90, concentrated on the slow clients.

    Args:
      num_clients: number of clients C.
      latency_threshold: latency above which a client fails (the older rule: 90), > 0.
      loss_threshold: loss at or above which a client fails (the older rule: 40), > 0.
      latency_median: median latency over clients, > 0.
      latency_client_sigma: spread of client medians (log scale), >= 0.
      latency_round_sigma: round-to-round spread (log scale), >= 0.

    Returns:
      A :class:`Failure` with :class:`LatencyState`.

    Example:
      >>> rule = failure_rule(num_clients=3, latency_client_sigma=0.0, latency_round_sigma=0.0)
      >>> failed, latency = rule.fails(rule.init(jax.random.key(0)), jax.random.key(1),
      ...                              jnp.array([0, 2]), jnp.array([1.0, 40.0]))
      >>> failed.tolist(), latency.tolist()
      ([False, True], [30.0, 30.0])
    """
    c = check_num_clients(num_clients)
    lat_thr = check_positive("latency_threshold", latency_threshold)
    loss_thr = check_positive("loss_threshold", loss_threshold)
    median = check_positive("latency_median", latency_median)
    s_client = check_positive("latency_client_sigma", latency_client_sigma, allow_zero=True)
    s_round = check_positive("latency_round_sigma", latency_round_sigma, allow_zero=True)

    def init(key):
        z = jax.random.normal(key, (c,))
        return LatencyState(median=median * jnp.exp(s_client * z))

    def draw(state, key, slots):
        e = jax.random.normal(key, jnp.shape(slots))
        return (state.median[slots] * jnp.exp(s_round * e)).astype(jnp.float32)

    def judge(latency, losses):
        losses = jnp.asarray(losses, jnp.float32)
        return (latency > lat_thr) | ~(losses < loss_thr)  # ~(<) so NaN fails

    return make_failure(init, draw, judge)


def no_failures(num_clients: int, **unused: Any) -> Failure:
    """No selected client ever fails; latency is reported as 0.

    Args:
      num_clients: number of clients C.
      **unused: ignored, so configs can switch rules without editing params.

    Returns:
      A :class:`Failure` whose ``draw`` gives zeros and ``judge`` all-False.

    Example:
      >>> r = no_failures(2)
      >>> r.fails(r.init(jax.random.key(0)), None, jnp.array([1]), jnp.array([99.0]))[0].tolist()
      [False]
    """
    check_num_clients(num_clients)

    def init(key):
        del key
        return ()

    def draw(state, key, slots):
        del state, key
        return jnp.zeros(jnp.shape(slots), jnp.float32)

    def judge(latency, losses):
        return jnp.zeros(jnp.broadcast_shapes(jnp.shape(latency), jnp.shape(losses)), bool)

    return make_failure(init, draw, judge)
