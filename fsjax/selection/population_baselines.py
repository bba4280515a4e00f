"""The CUP study's baseline schedulers (REFERENCE.md section B.3).

All select among the available clients, ``min(K, #available)`` of them,
except :func:`fedavg_random`, which draws from the whole population:

- :func:`fedavg_random`: K uniformly from all C clients (intent); a chosen
  client that is unavailable is selected but does not train
  (``Selection.intent`` True, ``valid`` False: S = 1, P = 0);
- :func:`uniform_available`: K uniformly among the available (= ``random``);
- :func:`least_selected`: fewest selections first;
- :func:`inverse_availability` / :func:`estimated_availability`: lowest /
  highest ``pi_k(t)`` first (REFERENCE B.1's estimate, round t included);
- :func:`round_robin`: the next available clients in client order after the
  last one chosen;
- :func:`fairfedcs`: FairFedCS (Shi et al. 2023), the K available with the
  largest ``sigma r_i + Q_i``.

Ties go to the lower client index (the study breaks them by its string ids).

Example:
  >>> sel = least_selected(); st = sel.init(jnp.ones((3, 2)))._replace(selected=jnp.array([2, 0, 1]))
  >>> sel.select(st, jnp.ones(3, bool), jax.random.key(0), 2).slots.tolist()
  [1, 2]
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fsjax.selection import baselines
from fsjax.selection.core import (Array, Feedback, Selection, Selector, SelectorState,
                                  _check_call, _selector, _top_k, init_state, update_state)
from fsjax.selection.cup_scheduler import availability_now


def fedavg_random() -> Selector:
    """FedAvg-random: K clients uniformly from ALL C clients, available or not.

    The slots that name an available client are ``valid`` (they train) and
    come first; the others are selected but unavailable: ``intent`` True,
    ``valid`` False (REFERENCE B.1 step 4: S = 1, P = 0). ``intent`` marks all
    K chosen clients.

    Returns:
      A :class:`Selector`.

    Example:
      >>> sel = fedavg_random(); st = sel.init(jnp.ones((4, 2)))
      >>> s = sel.select(st, jnp.array([True, False, False, False]), jax.random.key(0), 4)
      >>> s.valid.tolist(), s.intent.tolist(), s.slots.tolist()[0]
      ([True, False, False, False], [True, True, True, True], 0)
    """

    def select(state, available, key, num_slots):
        c, k = _check_call(state, available, num_slots)
        avail = jnp.asarray(available, bool)
        pick = _top_k(jax.random.uniform(key, (c,)), jnp.ones((c,), bool), None, k)
        ok = avail[pick.slots]
        order = jnp.argsort(~ok, stable=True)      # available slots first
        slots, ok = pick.slots[order], ok[order]
        return Selection(slots=slots, valid=ok, intent=jnp.ones((k,), bool))

    return _selector(select)


def uniform_available() -> Selector:
    """Uniform-available: K clients uniformly among the available (the same law,
    and the same draws for the same key, as ``random``/PSP).

    Example:
      >>> sel = uniform_available(); st = sel.init(jnp.ones((3, 2)))
      >>> sel.select(st, jnp.array([True, False, True]), jax.random.key(0), 2).valid.tolist()
      [True, True]
    """

    return baselines.random()


def _ranked(score) -> Selector:
    """The K available clients with the largest ``score(state, available)`` f32[C]
    (ties: lower index), without randomness."""

    def select(state, available, key, num_slots):
        _, k = _check_call(state, available, num_slots)
        return _top_k(score(state, available), available, None, k)

    return _selector(select)


def least_selected() -> Selector:
    """The K available clients selected fewest times so far (ties: lower index).

    Example:
      >>> sel = least_selected(); st = sel.init(jnp.ones((3, 2)))
      >>> sel.select(st, jnp.array([True, True, True]), jax.random.key(0), 2).slots.tolist()
      [0, 1]
    """

    return _ranked(lambda state, available: -state.selected.astype(jnp.float32))


def inverse_availability() -> Selector:
    """The K available clients with the lowest ``pi_k(t)`` (ties: lower index).

    Example:
      >>> sel = inverse_availability(); st = sel.init(jnp.ones((3, 2)))._replace(
      ...     rounds=jnp.int32(3), available=jnp.array([3, 0, 1]))
      >>> sel.select(st, jnp.ones(3, bool), jax.random.key(0), 2).slots.tolist()
      [1, 2]
    """

    return _ranked(lambda state, available: -availability_now(state, available))


def estimated_availability() -> Selector:
    """The K available clients with the highest ``pi_k(t)`` (ties: lower index).

    Example:
      >>> sel = estimated_availability(); st = sel.init(jnp.ones((3, 2)))._replace(
      ...     rounds=jnp.int32(3), available=jnp.array([3, 0, 1]))
      >>> sel.select(st, jnp.ones(3, bool), jax.random.key(0), 2).slots.tolist()
      [0, 2]
    """

    return _ranked(availability_now)


class RoundRobinState(NamedTuple):
    """Attributes:
      base: SelectorState  # the shared history
      cursor: i32[]  # the first client to consider next round
    """

    base: SelectorState
    cursor: Array


def round_robin() -> Selector:
    """Round robin over the available: the next K available clients in client
    order, cyclically, starting at a cursor that moves past the last client
    selected. **fsjax**: the cursor is a client index (the study keeps a
    position in the current round's available list, which shifts whenever
    availability changes).

    Example:
      >>> sel = round_robin(); st = sel.init(jnp.ones((4, 2)))
      >>> s = sel.select(st, jnp.ones(4, bool), jax.random.key(0), 3); s.slots.tolist()
      [0, 1, 2]
      >>> from fsjax.selection.core import make_feedback
      >>> st = sel.update(st, make_feedback(jnp.ones(4, bool), s, jnp.zeros(3, bool),
      ...                                   jnp.zeros(4), jnp.zeros(4)))
      >>> sel.select(st, jnp.ones(4, bool), jax.random.key(0), 3).slots.tolist()
      [3, 0, 1]
    """

    def init(label_hist):
        return RoundRobinState(init_state(label_hist), jnp.zeros((), jnp.int32))

    def select(state, available, key, num_slots):
        c, k = _check_call(state.base, available, num_slots)
        dist = (jnp.arange(c) - state.cursor) % c        # 0 for the cursor itself
        return _top_k(-dist.astype(jnp.float32), available, None, k)

    def update(state, feedback):
        c = jnp.shape(feedback.selected)[0]
        dist = (jnp.arange(c) - state.cursor) % c
        sel = jnp.asarray(feedback.selected, bool)
        last = jnp.argmax(jnp.where(sel, dist, -1))
        cursor = jnp.where(jnp.any(sel), (last + 1) % c, state.cursor).astype(jnp.int32)
        return RoundRobinState(update_state(state.base, feedback), cursor)

    return Selector(init, jax.jit(select, static_argnums=3), jax.jit(update))


class FairFedCSState(NamedTuple):
    """Attributes:
      base: SelectorState  # the shared history
      queue: f32[C]  # Lyapunov virtual queue Q_i
      reputation: f32[C]  # r_i, a running mean of loss reductions
    """

    base: SelectorState
    queue: Array
    reputation: Array


def fairfedcs(sigma: float = 1.0, rho: float = 0.9, m: int | None = None) -> Selector:
    """FairFedCS (REFERENCE B.3): the K available with the largest ``sigma r_i + Q_i``.

    After each round ``Q_i <- max(0, Q_i + m'/C - S_i)`` (``m' = min(m, C)``,
    S = selected) and, for participants, ``r_i <- rho r_i + (1 - rho) max(0,
    F_i(w_t) - final local loss_i)``; Q = r = 0 at start; ties go to the lower
    index. The round must report ``Feedback.loss_before`` (F_i(w_t)) and
    ``Feedback.local_loss``; when it does not, the loss reduction counts as 0
    (then only the queue ranks clients).

    Args:
      sigma: weight of the reputation, >= 0.
      rho: reputation decay in [0, 1].
      m: the budget m; None takes ``Feedback.budget`` (the round's K).

    Returns:
      A :class:`Selector` with state :class:`FairFedCSState`.

    Raises:
      ValueError: a parameter out of range; at update, no budget from ``m``
        nor ``Feedback.budget``.

    Example:
      >>> sel = fairfedcs(m=1); st = sel.init(jnp.ones((3, 2)))
      >>> st = st._replace(queue=jnp.array([0.0, 0.5, 0.2]))
      >>> sel.select(st, jnp.ones(3, bool), jax.random.key(0), 2).slots.tolist()
      [1, 2]
    """
    for name, v, hi in (("sigma", sigma, math.inf), ("rho", rho, 1.0)):
        try:
            fv = float(v)
        except (TypeError, ValueError):
            fv = float("nan")
        if not (math.isfinite(fv) and 0.0 <= fv <= hi):
            raise ValueError(f"{name}={v!r}: expected a finite number >= 0"
                             + (" and <= 1" if hi == 1.0 else ""))
    if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
        raise ValueError(f"m={m!r}: expected None or an integer budget >= 1")
    sigma_f, rho_f = float(sigma), float(rho)

    def init(label_hist):
        base = init_state(label_hist)
        z = jnp.zeros(base.available.shape, jnp.float32)
        return FairFedCSState(base, z, z)

    def select(state, available, key, num_slots):
        _, k = _check_call(state.base, available, num_slots)
        return _top_k(sigma_f * state.reputation + state.queue, available, None, k)

    def update(state, feedback: Feedback):
        c = state.queue.shape[0]
        if m is not None:
            budget = jnp.float32(min(m, c))
        elif feedback.budget is not None:
            budget = jnp.minimum(jnp.asarray(feedback.budget, jnp.float32), c)
        else:
            raise ValueError("fairfedcs needs the round budget: set selection.m, or the round "
                             "must pass Feedback.budget")
        sel = jnp.asarray(feedback.selected, jnp.float32)
        queue = jnp.maximum(0.0, state.queue + budget / c - sel)
        part = jnp.asarray(feedback.participated, bool)
        if feedback.loss_before is None or feedback.local_loss is None:
            gain = jnp.zeros((c,), jnp.float32)
        else:
            gain = jnp.maximum(0.0, jnp.nan_to_num(
                jnp.asarray(feedback.loss_before, jnp.float32)
                - jnp.asarray(feedback.local_loss, jnp.float32), nan=0.0))
        rep = jnp.where(part, rho_f * state.reputation + (1 - rho_f) * gain, state.reputation)
        return FairFedCSState(update_state(state.base, feedback), queue, rep)

    return Selector(init, jax.jit(select, static_argnums=3), jax.jit(update))
