"""CUP, the Cumulative Utility Parity scheduler of REFERENCE.md section B.2.

Holds, in the order a round uses them:

- :func:`inclusion_probabilities`: water-filling of client weights into
  inclusion probabilities q over the available clients, summing to
  ``min(m, #available)``;
- :func:`dependent_rounding`: a fixed-size sample with marginals q (the
  study's ordered pivotal method, as one ``lax.scan``);
- :func:`cup_scores` (reactive) and :func:`oracle_maxmin_scores`: the weights;
- :class:`CupState` and :func:`cup`: the selector.

(The module is not named ``cup.py`` so that ``fsjax.selection.cup`` stays the
factory function.)

Example:
  >>> q = inclusion_probabilities(jnp.array([8.0, 2.0, 1.0]), jnp.ones(3, bool), 2)
  >>> [round(x, 4) for x in q.tolist()]
  [1.0, 0.6667, 0.3333]
  >>> int(dependent_rounding(jax.random.key(0), q).sum())
  2
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fsjax.selection.core import (Array, Feedback, Selection, Selector, SelectorState,
                                  _check_call, init_state, update_state)

SCHEDULERS = ("reactive", "oracle_maxmin")
_TOL = 1e-6   # f32 stand-in for the study's 1e-12: a q within this of 0 or 1 is integral


@jax.jit
def inclusion_probabilities(weights: Array, available: Array, m) -> Array:
    """Water-filling (REFERENCE B.2): inclusion probabilities from weights.

    Over the available clients, capacity ``c = min(m, #available)``; weights
    below 0 (or NaN) count as 0, and if every available weight is 0 all count
    as 1. Repeat: ``s = B / (sum of the remaining weights)``; if no remaining
    client has ``s * w_k >= 1`` set ``q_k = s * w_k`` and stop, else set those
    to 1, take them off ``B`` and out of the remaining. **fsjax**: when only
    zero-weight clients remain with ``B > 0`` (the study divides by zero
    there), ``B`` is spread evenly over them.

    Args:
      weights: f32[C] client weights (scores).
      available: bool[C] which clients can be chosen.
      m: the budget (an int, possibly traced).

    Returns:
      f32[C] in [0, 1], 0 for unavailable clients, summing to ``min(m, #available)``.

    Example:
      >>> q = inclusion_probabilities(jnp.array([3.0, 1.0, 5.0]), jnp.array([True, True, False]), 1)
      >>> q.tolist()
      [0.75, 0.25, 0.0]
    """
    avail = jnp.asarray(available, bool)
    w = jnp.clip(jnp.nan_to_num(jnp.asarray(weights, jnp.float32), nan=0.0, posinf=1e30), 0.0, 1e30)
    w = jnp.where(avail, w, 0.0)
    w = jnp.where(jnp.any(w > 0), w, avail.astype(jnp.float32))
    cap = jnp.minimum(jnp.asarray(m, jnp.float32), jnp.sum(avail).astype(jnp.float32))

    def cond(carry):
        _, _, done = carry
        return ~done

    def body(carry):
        sat, budget, _ = carry
        rem = avail & ~sat
        total = jnp.sum(jnp.where(rem, w, 0.0))
        scale = budget / jnp.where(total > 0, total, 1.0)
        new = rem & (scale * w >= 1.0) & (total > 0)
        done = ~jnp.any(new) | (budget <= 0)
        return sat | new, budget - jnp.sum(new), done

    sat, budget, _ = jax.lax.while_loop(
        cond, body, (jnp.zeros_like(avail), cap, cap <= 0))
    rem = avail & ~sat
    total = jnp.sum(jnp.where(rem, w, 0.0))
    n_rem = jnp.sum(rem)
    frac = jnp.where(total > 0, budget * w / jnp.where(total > 0, total, 1.0),
                     budget / jnp.maximum(n_rem, 1))
    q = jnp.where(sat, 1.0, jnp.where(rem & (budget > 0), frac, 0.0))
    return jnp.clip(q, 0.0, 1.0)


@jax.jit
def dependent_rounding(key: Array, q: Array) -> Array:
    """A random subset of exactly ``round(sum q)`` clients with ``P(k chosen) = q_k``.

    The ordered pivotal method the study uses (REFERENCE B.2): walking the
    clients in index order, the fractional survivor ``i`` and the next
    fractional client ``j`` "fight": with ``a = min(1 - q_i, q_j)`` and
    ``b = min(q_i, 1 - q_j)``, with probability ``b / (a + b)`` ``q_i += a,
    q_j -= a``, else ``q_i -= b, q_j += b``; one of them becomes 0 or 1 and
    the other carries on. Each fight keeps every expectation, so the marginals
    are exactly q; the size is exact because the sum is kept. Values within
    1e-6 of 0 or 1 count as integral; the last survivor is rounded (it is 0
    or 1 up to rounding error when ``sum q`` is an integer).

    Args:
      key: a PRNG key.
      q: f32[C] probabilities in [0, 1].

    Returns:
      bool[C].

    Example:
      >>> dependent_rounding(jax.random.key(1), jnp.array([1.0, 0.5, 0.5, 0.0])).sum().item()
      2
    """
    q = jnp.clip(jnp.asarray(q, jnp.float32), 0.0, 1.0)
    c = q.shape[0]
    u = jax.random.uniform(key, (c,))

    def step(carry, x):
        out, ci, cv = carry  # final values, survivor index (-1: none), survivor value
        j, v, uj = x
        integral = (v <= _TOL) | (v >= 1.0 - _TOL)
        has = ci >= 0
        a = jnp.minimum(1.0 - cv, v)
        b = jnp.minimum(cv, 1.0 - v)
        first = uj * (a + b) < b          # probability b / (a + b)
        s = cv + v
        # first: s >= 1 -> (i=1, j=s-1) else (i=s, j=0); second: s <= 1 -> (i=0, j=s) else (i=s-1, j=1)
        vi = jnp.where(first, jnp.where(s >= 1, 1.0, s), jnp.where(s <= 1, 0.0, s - 1.0))
        vj = s - vi
        fight = has & ~integral
        i_done = fight & ((vi <= _TOL) | (vi >= 1.0 - _TOL))
        # exactly one side is finished by a fight; the other survives
        out = out.at[ci].set(jnp.where(i_done, jnp.round(vi), out[ci]))
        j_final = jnp.where(fight, vj, v)
        j_done = integral | (fight & ~i_done)
        out = out.at[j].set(jnp.where(j_done, jnp.round(jnp.clip(j_final, 0.0, 1.0)), out[j]))
        new_ci = jnp.where(~has & ~integral, j,
                           jnp.where(fight, jnp.where(i_done, j, ci), ci))
        new_cv = jnp.where(~has & ~integral, v,
                           jnp.where(fight, jnp.where(i_done, vj, vi), cv))
        # a survivor that landed on 0 or 1 is finished too
        surv_done = (new_ci >= 0) & ((new_cv <= _TOL) | (new_cv >= 1.0 - _TOL))
        out = out.at[new_ci].set(jnp.where(surv_done, jnp.round(new_cv), out[new_ci]))
        new_ci = jnp.where(surv_done, -1, new_ci)
        return (out, new_ci, new_cv), None

    init = (jnp.zeros((c,), jnp.float32), jnp.int32(-1), jnp.float32(0.0))
    (out, ci, cv), _ = jax.lax.scan(step, init, (jnp.arange(c, dtype=jnp.int32), q, u))
    out = out.at[ci].set(jnp.where(ci >= 0, jnp.round(cv), out[ci]))
    return out > 0.5


def availability_now(state: SelectorState, available: Array) -> Array:
    """pi_k(t) of REFERENCE B.1 step 2: rounds available, this one included, over t + 1.

    Args:
      state: the shared history after rounds 0..t-1 (``state.rounds`` = t).
      available: bool[C] availability in round t.

    Returns:
      f32[C] in [0, 1].

    Example:
      >>> st = init_state(jnp.ones((2, 3)))
      >>> availability_now(st, jnp.array([True, False])).tolist()
      [1.0, 0.0]
    """
    return ((state.available + jnp.asarray(available, jnp.int32)).astype(jnp.float32)
            / (state.rounds + 1.0))


@jax.jit
def cup_scores(pi: Array, debt: Array, lam: float = 0.1, eps: float = 1e-3,
               clip: float = 100.0) -> Array:
    """CUP's reactive score ``min(1 / (pi_k + eps), clip) * (1 + lam * d_k)`` (alpha_k = 1).

    Args:
      pi: f32[C] availability estimates (:func:`availability_now`).
      debt: f32[C] participation debt d_k (rounds not participated).
      lam, eps, clip: REFERENCE B.2's lambda, epsilon and inverse clip.

    Returns:
      f32[C].

    Example:
      >>> [round(x, 4) for x in cup_scores(jnp.array([0.0, 0.5]), jnp.array([0.0, 10.0])).tolist()]
      [100.0, 3.992]
    """
    inv = jnp.minimum(1.0 / (jnp.asarray(pi, jnp.float32) + eps), clip)
    return inv * (1.0 + lam * jnp.asarray(debt, jnp.float32))


@jax.jit
def oracle_maxmin_scores(pi: Array, utility: Array, participations: Array, m,
                         eps: float = 1e-3) -> Array:
    """The ``oracle_maxmin`` rates of REFERENCE B.2 (the study's Lemma 2).

    ``pi'_k = max(pi_k, eps)``, ``mu_k = max(u_k / max(1, p_k), eps)``,
    ``B = min(m, sum pi')``, ``tau = min(min mu, B / sum(pi'_k / mu_k))``,
    ``r_k = tau / mu_k``; all over the whole population.

    Args:
      pi: f32[C] availability estimates.
      utility: f32[C] cumulative utility u_k.
      participations: f32[C] participation counts p_k.
      m: the budget.
      eps: floor of pi and mu.

    Returns:
      f32[C] rates r_k.

    Example:
      >>> r = oracle_maxmin_scores(jnp.array([1.0, 0.5]), jnp.array([2.0, 1.0]), jnp.array([2, 1]), 1)
      >>> [round(x, 4) for x in r.tolist()]
      [0.6667, 0.6667]
    """
    pi_ = jnp.maximum(jnp.asarray(pi, jnp.float32), eps)
    mu = jnp.maximum(jnp.asarray(utility, jnp.float32)
                     / jnp.maximum(jnp.asarray(participations, jnp.float32), 1.0), eps)
    budget = jnp.minimum(jnp.asarray(m, jnp.float32), jnp.sum(pi_))
    tau = jnp.minimum(jnp.min(mu), budget / jnp.sum(pi_ / mu))
    return tau / mu


class CupState(NamedTuple):
    """CUP's state: the shared history plus the utility accounting of REFERENCE B.1.

    Attributes:
      base: SelectorState  # counts: available, selected, participated, rounds
      utility: f32[C]  # u_k: utility increments summed over the rounds participated
      last_accuracy: f32[C]  # last reported ``Feedback.utility`` (for accuracy_gain)
      evaluated: bool[]  # a previous round reported (the first round's gain is 0)
    """

    base: SelectorState
    utility: Array
    last_accuracy: Array
    evaluated: Array


def cup_init(label_hist: Array) -> CupState:
    """Empty :class:`CupState` for C clients (C from ``label_hist``'s shape)."""
    base = init_state(label_hist)
    c = base.available.shape[0]
    return CupState(base, jnp.zeros((c,), jnp.float32), jnp.zeros((c,), jnp.float32),
                    jnp.zeros((), bool))


def cup_update(state: CupState, feedback: Feedback) -> CupState:
    """Adds one round: counts, and u_k += Delta u_k(t) for participants (B.1 step 8).

    Delta u_k(t) is ``feedback.gain`` when the round gives it, else
    ``accuracy_gain``: ``feedback.utility`` minus the previous round's (0 in the
    first round), signed. Debt is ``rounds - participated`` (never reset).
    """
    acc = jnp.nan_to_num(jnp.asarray(feedback.utility, jnp.float32), nan=0.0)
    if feedback.gain is None:
        gain = jnp.where(state.evaluated, acc - state.last_accuracy, 0.0)
    else:
        gain = jnp.nan_to_num(jnp.asarray(feedback.gain, jnp.float32), nan=0.0)
    part = jnp.asarray(feedback.participated, bool)
    return CupState(update_state(state.base, feedback),
                    state.utility + jnp.where(part, gain, 0.0), acc, jnp.ones((), bool))


def cup(lam: float = 0.1, eps: float = 1e-3, clip: float = 100.0,
        scheduler: str = "reactive") -> Selector:
    """CUP (REFERENCE B.2): water-filled inclusion probabilities and dependent rounding.

    In round t, with ``pi_k(t)`` the fraction of rounds 0..t the client was
    available and ``d_k(t)`` the rounds 0..t-1 it did not participate in (never
    reset; unavailable rounds count), the weights are the reactive
    :func:`cup_scores` or the :func:`oracle_maxmin_scores` (``scheduler``);
    :func:`inclusion_probabilities` turns them into q over the available
    clients with capacity ``min(K, #available)`` and :func:`dependent_rounding`
    picks exactly that many. The valid slots come first (in client order);
    ``Selection.probs`` holds each slot's q for the Horvitz-Thompson
    aggregation (``aggregation.name: horvitz_thompson``).

    Args:
      lam: debt weight lambda >= 0.
      eps: epsilon > 0 in ``1 / (pi + eps)`` (and the oracle's floor).
      clip: cap > 0 on ``1 / (pi + eps)``.
      scheduler: ``"reactive"`` or ``"oracle_maxmin"``.

    Returns:
      A :class:`Selector` with state :class:`CupState`.

    Raises:
      ValueError: a parameter out of range or an unknown scheduler.

    Example:
      >>> sel = cup(); st = sel.init(jnp.ones((4, 2)))
      >>> s = sel.select(st, jnp.array([True, False, True, True]), jax.random.key(0), 2)
      >>> s.valid.tolist(), [round(p, 3) for p in s.probs.tolist()]
      ([True, True], [0.667, 0.667])
    """
    for name, v, lo_ok in (("lam", lam, True), ("eps", eps, False), ("clip", clip, False)):
        try:
            fv = float(v)
        except (TypeError, ValueError):
            fv = float("nan")
        if not (math.isfinite(fv) and (fv >= 0 if lo_ok else fv > 0)):
            raise ValueError(f"{name}={v!r}: expected a finite number "
                             f"{'>= 0' if lo_ok else '> 0'}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler={scheduler!r}: expected one of {list(SCHEDULERS)}")
    lam_f, eps_f, clip_f = float(lam), float(eps), float(clip)

    def select(state, available, key, num_slots):
        c, k = _check_call(state.base, available, num_slots)
        avail = jnp.asarray(available, bool)
        base = state.base
        pi = availability_now(base, avail)
        if scheduler == "reactive":
            score = cup_scores(pi, base.rounds - base.participated, lam_f, eps_f, clip_f)
        else:
            score = oracle_maxmin_scores(pi, state.utility, base.participated, k, eps_f)
        q = inclusion_probabilities(score, avail, k)
        chosen = dependent_rounding(key, q)
        (slots,) = jnp.nonzero(chosen, size=k, fill_value=0)
        valid = jnp.arange(k) < jnp.sum(chosen)
        slots = jnp.where(valid, slots, 0).astype(jnp.int32)
        return Selection(slots=slots, valid=valid, probs=jnp.where(valid, q[slots], 0.0))

    return Selector(cup_init, jax.jit(select, static_argnums=3), jax.jit(cup_update))
