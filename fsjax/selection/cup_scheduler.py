"""CUP, the Cumulative Utility Parity scheduler of REFERENCE.md section B.2.

Holds, in the order a round uses them:

- :func:`inclusion_probabilities`: water-filling of client weights into
  inclusion probabilities q over the available clients, summing to
  ``min(m, #available)``;
- :func:`dependent_rounding`: a fixed-size sample with marginals q (the
  study's ordered pivotal method, as one ``lax.scan`` over the C clients);
- :func:`systematic_sampling`: the same law's size and marginals from a
  parallel O(C) sampler (systematic sampling in a random order), for large
  populations (``cup(sampler="systematic")``);
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
  >>> int(systematic_sampling(jax.random.key(0), q).sum())
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
SAMPLERS = ("pivotal", "systematic")
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


def _hash32(x: Array, k: Array) -> Array:
    """A 32-bit mixing function of ``x ^ k`` (murmur3's finaliser), elementwise on uint32."""
    x = (x ^ k) * jnp.uint32(0x9E3779B1)
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _materialise(x: Array) -> Array:
    """``x``, computed once into a buffer before its consumers run.

    XLA fuses elementwise producers into a gather's or scatter's indices and
    operand, where they run once per element in a scalar loop: on XLA:CPU the
    Feistel positions and the last prefix-sum level fused that way made
    :func:`systematic_sampling` 4-5x slower at C = 10^6 (~200 vs ~45 ms).
    ``lax.optimization_barrier`` did not stop it there; a loop's result cannot
    be fused into its consumers, so ``x`` goes through a one-trip loop.
    """
    return jax.lax.fori_loop(0, 1, lambda i, v: v, x)


def _random_positions(keys: Array, c: int) -> tuple[Array, int]:
    """A keyed pseudo-random permutation of ``0..c-1`` into ``[0, 2**bits)``, O(c), no sort.

    A four-round (possibly unbalanced) Feistel network over ``bits`` bits,
    ``2**bits >= c``: a bijection of ``[0, 2**bits)`` whatever the round
    function, so the c clients land on distinct positions (the rest stay empty).
    XLA:CPU sorts 10^6 keys in ~1 s, which a ``jax.random.permutation`` would cost.
    The rounds run as a two-trip loop of two rounds (a loop result is not fused
    into the gathers that use it: :func:`_materialise`).

    Returns:
      ``(positions u32[c], bits)``.
    """
    bits = max(1, (c - 1).bit_length())
    p0, r0 = bits // 2, bits - bits // 2     # x = (left: p bits, right: r bits)

    def two_rounds(i, x):
        for j, (p, r) in enumerate(((p0, r0), (r0, p0))):
            left, right = x >> r, x & jnp.uint32((1 << r) - 1)
            left = (left ^ _hash32(right, keys[2 * i + j])) & jnp.uint32((1 << p) - 1)
            x = (right << p) | left          # the right part moves to the top
        return x

    return jax.lax.fori_loop(0, 2, two_rounds, jnp.arange(c, dtype=jnp.uint32)), bits


def _unit_uniform(x: Array, k: Array) -> Array:
    """f32 in [0, 1) with 24 random bits, a hash of ``x`` under key ``k``."""
    return (_hash32(x, k) >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


def _add_clamped(big: Array, delta: Array) -> Array:
    """u32 ``big + delta`` (``delta`` i32), clamped to [0, 2^32 - 1] instead of wrapping."""
    out = big + jax.lax.bitcast_convert_type(delta, jnp.uint32)
    out = jnp.where((delta > 0) & (out < big), jnp.uint32(0xFFFFFFFF), out)
    return jnp.where((delta < 0) & (out > big), jnp.uint32(0), out)


def _fixed_point_q(q: Array, frac: Array, pos: Array, keys: Array) -> Array:
    """u32[C]: ``q`` in units of 2^-32, rescaled to sum to an integer exactly (mod 2^32).

    Fractional clients only (0 elsewhere). ``Q_k`` rounds ``q_k 2^32`` up or
    down at random (``E[Q_k] = q_k 2^32`` exactly: ``q_k 2^32``'s integer and
    fractional parts are exact in f32). The residual ``R`` to the nearest
    multiple of 2^32, known exactly from the wrapping u32 sum, is shared in
    proportion to q, again rounded at random (so ``E`` is the proportional
    share), and what rounding leaves (a few hundred units, mean ~0) goes to
    the client with the most room on both sides. The marginals are therefore
    ``q_k * n / sum(q)`` in expectation up to ~2^-32 absolute. No value ever
    wraps (additions are clamped); only q far from an integral sum can make
    the total miss the multiple, which :func:`systematic_sampling` repairs.
    """
    qf = jnp.where(frac, q, 0.0)
    y = qf * 65536.0                          # q 2^16: exact (power-of-two scaling)
    hi = jnp.floor(y)
    z = (y - hi) * 65536.0                    # the next 16 bits and the rest: exact
    lo = jnp.floor(z)
    bump = (_unit_uniform(pos, keys[4]) < z - lo).astype(jnp.uint32)
    big = (hi.astype(jnp.uint32) << 16) + lo.astype(jnp.uint32) + bump
    big = jnp.where(frac, big, jnp.uint32(0))
    # R = -(sum mod 2^32), as a signed int: the distance to the nearest multiple.
    resid = jax.lax.bitcast_convert_type(jnp.uint32(0) - jnp.sum(big, dtype=jnp.uint32), jnp.int32)
    total = jnp.sum(qf)
    share = resid.astype(jnp.float32) * qf / jnp.where(total > 0, total, 1.0)
    fl = jnp.floor(share)
    eps = (fl + (_unit_uniform(pos, keys[5]) < share - fl)).astype(jnp.int32)
    new = _add_clamped(big, jnp.where(frac, eps, 0))
    applied = jax.lax.bitcast_convert_type(new - big, jnp.int32)
    rest = resid - jnp.sum(applied)           # int32 wrap-around sums stay exact
    room = jnp.where(frac, jnp.minimum(new, jnp.uint32(0xFFFFFFFF) - new), 0)
    j = jnp.argmax(room)
    return new.at[j].set(_add_clamped(new[j], rest))


@jax.jit
def systematic_sampling(key: Array, q: Array) -> Array:
    """Like :func:`dependent_rounding` (exact size, marginals q), parallel and O(C).

    Systematic (Madow) sampling in a random order: the clients are laid on a
    line in a random order, each taking a segment of length ``q_k``, and a
    grid of points one apart from a uniform start picks the clients whose
    segments hold a point. The sums are exact: q is held in fixed point (units
    of 2^-32, :func:`_fixed_point_q`) and summed in wrapping uint32, so the
    number of points is exactly ``round(sum q)`` (whatever float rounding the
    q carry) and each marginal is exactly the fixed-point q. Clients with
    ``q >= 1 - 1e-6`` are taken, ``q <= 0`` never. The order is a keyed
    Feistel permutation (no sort); an associative scan does the prefix sum.

    The joint law differs from the pivotal method's (only size and marginals
    are the same); it is the one to use at large C, and on GPUs, where the
    pivotal method's C sequential steps dominate a round.

    Args:
      key: a PRNG key.
      q: f32[C] probabilities in [0, 1] summing to an integer up to float
        rounding (as :func:`inclusion_probabilities` returns them). Other sums
        are rounded to the nearest integer and the fractional q rescaled to it.

    Returns:
      bool[C] with exactly ``round(sum q)`` True.

    Example:
      >>> systematic_sampling(jax.random.key(1), jnp.array([1.0, 0.5, 0.5, 0.0])).sum().item()
      2
    """
    q = jnp.clip(jnp.nan_to_num(jnp.asarray(q, jnp.float32), nan=0.0), 0.0, 1.0)
    c = q.shape[0]
    k_perm, k_start = jax.random.split(key)
    keys = jax.random.bits(k_perm, (6,), jnp.uint32)
    certain = q >= 1.0 - _TOL
    frac = (q > 0) & ~certain
    pos, bits = _random_positions(keys, c)
    big = _fixed_point_q(q, frac, pos, keys)
    line = jnp.zeros((1 << bits,), jnp.uint32).at[pos].set(big, unique_indices=True)
    start = jax.random.bits(k_start, (), jnp.uint32)
    end = _materialise(start + jax.lax.associative_scan(jnp.add, line))   # wraps mod 2^32
    mine = end[pos]
    chosen = certain | (frac & (mine < mine - big))   # k's segment crossed a multiple of 2^32
    # Exact by construction unless sum(q) is far from an integer: then add the
    # likeliest unchosen or drop the least likely chosen client (the total
    # leftover is under 2^31 units, so the count is off by one at most).
    diff = (jnp.sum(certain) + jnp.round(jnp.sum(jnp.where(frac, q, 0.0))).astype(jnp.int32)
            - jnp.sum(chosen))

    def repair(chosen):
        add = jnp.argmax(jnp.where(frac & ~chosen, q, -1.0))
        drop = jnp.argmin(jnp.where(frac & chosen, q, 2.0))
        chosen = chosen.at[add].set(chosen[add] | (diff > 0))
        return chosen.at[drop].set(chosen[drop] & ~(diff < 0))

    return jax.lax.cond(diff != 0, repair, lambda chosen: chosen, chosen)


def first_true(mask: Array, k: int) -> Array:
    """i32[k]: the indices of the first ``k`` True entries of ``mask``, ascending.

    Same as ``jnp.nonzero(mask, size=k)[0]`` where there are at least k (the
    rest is unspecified; callers mask it), but a ``lax.top_k`` over f32 keys:
    on XLA:CPU 5-15x faster than ``nonzero``'s cumsum-and-scatter at C = 10^6
    (integer ``top_k`` falls back to a sort there). f32 holds every index
    exactly up to 2^24 clients; beyond that ``nonzero`` is used.

    Example:
      >>> first_true(jnp.array([False, True, False, True, True]), 2).tolist()
      [1, 3]
    """
    c = mask.shape[0]
    if c > (1 << 24):
        return jnp.nonzero(mask, size=k, fill_value=0)[0].astype(jnp.int32)
    keys = jnp.where(mask, -jnp.arange(c, dtype=jnp.float32), -jnp.inf)
    return jax.lax.top_k(keys, k)[1].astype(jnp.int32)


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
        scheduler: str = "reactive", sampler: str = "pivotal") -> Selector:
    """CUP (REFERENCE B.2): water-filled inclusion probabilities and dependent rounding.

    In round t, with ``pi_k(t)`` the fraction of rounds 0..t the client was
    available and ``d_k(t)`` the rounds 0..t-1 it did not participate in (never
    reset; unavailable rounds count), the weights are the reactive
    :func:`cup_scores` or the :func:`oracle_maxmin_scores` (``scheduler``);
    :func:`inclusion_probabilities` turns them into q over the available
    clients with capacity ``min(K, #available)`` and the ``sampler`` picks
    exactly that many: :func:`dependent_rounding` (``"pivotal"``, the study's
    ordered pivotal method: C sequential steps) or :func:`systematic_sampling`
    (``"systematic"``: parallel, O(C); the same size and marginals, another
    joint law and random stream; meant for large C and GPUs, where the pivotal
    scan costs ~50 ms (CPU) to seconds (GPU) per round at C = 10^6). There is
    no automatic switch: a sweep over C compares one algorithm. The valid
    slots come first (in client order);
    ``Selection.probs`` holds each slot's q for the Horvitz-Thompson
    aggregation (``aggregation.name: horvitz_thompson``).

    Args:
      lam: debt weight lambda >= 0.
      eps: epsilon > 0 in ``1 / (pi + eps)`` (and the oracle's floor).
      clip: cap > 0 on ``1 / (pi + eps)``.
      scheduler: ``"reactive"`` or ``"oracle_maxmin"``.
      sampler: ``"pivotal"`` (default, the study's) or ``"systematic"``.

    Returns:
      A :class:`Selector` with state :class:`CupState`.

    Raises:
      ValueError: a parameter out of range, an unknown scheduler or sampler.

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
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}: expected one of {list(SAMPLERS)}")
    draw = dependent_rounding if sampler == "pivotal" else systematic_sampling
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
        chosen = draw(key, q)
        slots = first_true(chosen, k)
        valid = jnp.arange(k) < jnp.sum(chosen)
        slots = jnp.where(valid, slots, 0).astype(jnp.int32)
        return Selection(slots=slots, valid=valid, probs=jnp.where(valid, q[slots], 0.0))

    return Selector(cup_init, jax.jit(select, static_argnums=3), jax.jit(cup_update))
