"""The CUP study's fairness metrics (REFERENCE.md B.6), pure and jit-able.

:func:`cup_metrics` maps the run's per-client counts and cumulative utility
to the six numbers the study reports after each round. Utility is normalised
by the availability estimate ``pi_k = a_k / T`` (``u~_k = u_k / pi_k``,
undefined where ``pi_k = 0``). Re-exported as ``fsjax.metrics.cup_metrics``.

Example:
  >>> out = cup_metrics(jnp.array([2, 0]), jnp.array([2, 1]), jnp.array([2, 0]),
  ...                   jnp.array([0.4, 0.0]), 1, 2)
  >>> {k: round(float(v), 4) for k, v in sorted(out.items())}  # doctest: +NORMALIZE_WHITESPACE
  {'conditional_selection_gap': 1.0, 'participation_gini': 0.5, 'selection_gap': 1.0,
   'utility_cv': 0.995, 'utility_jain': 0.5, 'worst10_utility': 0.0}
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

CUP_METRIC_NAMES = ("utility_cv", "utility_jain", "selection_gap", "conditional_selection_gap",
                    "participation_gini", "worst10_utility")


@jax.jit
def normalised_utility(utility: Any, availability_counts: Any, rounds: Any) -> Array:
    """``u~_k = u_k / pi_k`` with ``pi_k = a_k / T``; NaN where ``pi_k = 0`` (undefined).

    Example:
      >>> normalised_utility(jnp.array([0.2, 0.5]), jnp.array([1, 0]), 4).tolist()
      [0.800000011920929, nan]
    """
    t = jnp.asarray(rounds, jnp.float32)
    pi = jnp.asarray(availability_counts, jnp.float32) / jnp.where(t > 0, t, 1.0)
    pi = jnp.where(t > 0, pi, 0.0)
    u = jnp.asarray(utility, jnp.float32)
    return jnp.where(pi > 0, u / jnp.where(pi > 0, pi, 1.0), jnp.nan)


def _gini(x: Array) -> Array:
    """``sum_i sum_j |x_i - x_j| / (2 n sum x)``, 0 if ``sum x = 0``; O(n log n) by sorting."""
    n = x.shape[0]
    s = jnp.sort(x)
    # sum_{i<j} (s_j - s_i) = sum_j (2 j - n + 1) s_j over the sorted values (j from 0)
    pair = 2.0 * jnp.sum((2.0 * jnp.arange(n) - n + 1.0) * s)
    total = jnp.sum(x)
    return jnp.where(total != 0, pair / (2.0 * n * jnp.where(total != 0, total, 1.0)), 0.0)


GINI_BINS = 1024   # histogram width of count_gini: counts spanning fewer values need no sort


def count_gini(counts: Any, bins: int = GINI_BINS) -> Array:
    """Gini ``sum_i sum_j |p_i - p_j| / (2 n sum p)`` of integer counts, O(n + bins), no sort.

    With ``h_v`` clients at count ``min p + v`` (a histogram of ``bins``
    bins), ``c_w = sum_{v<w} h_v`` and ``D_w = sum_{v<w} h_v (w - v) =
    sum_{u<=w} c_u``, the sum over unordered pairs is ``sum_w h_w D_w``: all
    terms non-negative (no cancellation, unlike the sorted formula). Counts
    spanning ``bins`` values or more take the sorted formula (a ``lax.cond``;
    participation counts of a fair scheduler span a few values). On XLA:CPU a
    sort of 10^6 values costs 0.1-1 s; this costs a few ms. Float (non-integer)
    input also takes the sorted formula. 0 if ``sum p = 0``.

    Args:
      counts: i32[n] (e.g. participation counts).
      bins: a static histogram width.

    Returns:
      f32 scalar, equal to the sorted formula up to float rounding.

    Example:
      >>> round(float(count_gini(jnp.array([3, 2, 1, 0]))), 4)  # 20 / 48
      0.4167
    """
    p = jnp.asarray(counts)
    if not jnp.issubdtype(p.dtype, jnp.integer):
        return _gini(p.astype(jnp.float32))
    p = p.astype(jnp.int32)
    n = p.shape[0]
    lo = jnp.min(p)
    total = jnp.sum(p.astype(jnp.float32))

    def from_histogram():
        h = jax.ops.segment_sum(jnp.ones_like(p), jnp.clip(p - lo, 0, bins - 1),
                                num_segments=bins)
        below = jnp.cumsum(h) - h                       # c_w: clients below value w (exact)
        dist = jnp.cumsum(below.astype(jnp.float32))    # D_w, non-negative terms
        return jnp.sum(h.astype(jnp.float32) * dist)

    def from_sort():
        s = jnp.sort(p).astype(jnp.float32)
        return jnp.sum((2.0 * jnp.arange(n) - n + 1.0) * s)

    half = jax.lax.cond(jnp.max(p) - lo < bins, from_histogram, from_sort)
    return jnp.where(total != 0, half / (n * jnp.where(total != 0, total, 1.0)), 0.0)


def _order_key(x: Array) -> Array:
    """u32 keys with the order of the f32 values (negatives reversed, sign bit flipped)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def smallest_mean(x: Any, k: int) -> Array:
    """Mean of the ``k`` smallest entries of ``x`` (no NaN), O(32 n), no sort.

    Finds the k-th smallest value by bisecting the bits of an order-preserving
    u32 key (32 counting passes), then adds the values below it and as many
    copies of it as ties need: ``jnp.mean(jnp.sort(x)[:k])`` up to the order
    of float summation. On XLA:CPU ``sort`` of 10^6 f32 costs ~1 s and
    ``lax.top_k(-x, 10^5)`` ~0.25 s; this ~15 ms.

    Args:
      x: f32[n] without NaN.
      k: a static int, 1 <= k <= n.

    Returns:
      f32 scalar.

    Example:
      >>> float(smallest_mean(jnp.array([3.0, -1.0, 2.0, -1.0, 5.0]), 3))
      0.0
    """
    x = jnp.asarray(x, jnp.float32)
    key = _order_key(x)

    def body(i, ans):
        trial = ans | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        return jnp.where(jnp.sum(key < trial) < k, trial, ans)

    kth = jax.lax.fori_loop(0, 32, body, jnp.uint32(0))   # the largest key with < k below it
    bits = jnp.where(kth >> 31 == 1, kth & jnp.uint32(0x7FFFFFFF), ~kth)
    value = jax.lax.bitcast_convert_type(bits, jnp.float32)
    below = key < kth
    return (jnp.sum(jnp.where(below, x, 0.0)) + (k - jnp.sum(below)) * value) / k


@jax.jit
def cup_metrics(selection_counts: Any, availability_counts: Any, participation_counts: Any,
                utility: Any, m: Any, rounds: Any, eps: float = 1e-3) -> dict[str, Array]:
    """The CUP study's metrics after T = ``rounds`` rounds (REFERENCE B.6).

    With ``pi_k = a_k / T``, ``K+ = {k: pi_k > 0}`` and ``x_k = u_k / pi_k``:

    - ``utility_cv`` = population std of x over K+ / (mean + eps); 0 if the
      mean is 0 (or K+ is empty);
    - ``utility_jain`` = (sum x)^2 / (|K+| sum x^2) over K+; 0 if sum x^2 = 0;
    - ``selection_gap`` = max_k |c_k - m' T / N| over all N clients, c_k the
      selection count (S, not P), ``m' = min(m, N)``;
    - ``conditional_selection_gap`` = max - min of ``c_k / a_k`` over the
      clients with ``a_k > 0`` (0 if none);
    - ``participation_gini`` = sum_i sum_j |p_i - p_j| / (2 N sum p) over the
      participation counts (0 if all are 0);
    - ``worst10_utility`` = mean of the ceil(0.1 N) smallest ``u~_k``, an
      undefined ``u~_k`` (pi_k = 0) counting as 0 (as the study does).

    Args:
      selection_counts: i32[N] rounds selected (S).
      availability_counts: i32[N] rounds available (A).
      participation_counts: i32[N] rounds participated (P = A S).
      utility: f32[N] cumulative utility u_k (increments credited on participation;
        add the surrogate for the "with surrogate" variant).
      m: the budget (clients per round).
      rounds: T, rounds so far.
      eps: the CV's denominator offset.

    Returns:
      dict of f32 scalars keyed by ``CUP_METRIC_NAMES``.
    """
    c = jnp.asarray(selection_counts, jnp.float32)
    a = jnp.asarray(availability_counts, jnp.float32)
    n = c.shape[0]
    t = jnp.asarray(rounds, jnp.float32)
    x = normalised_utility(utility, a, t)
    pos = ~jnp.isnan(x)
    k = jnp.sum(pos)
    xz = jnp.where(pos, x, 0.0)
    mean = jnp.sum(xz) / jnp.maximum(k, 1)
    std = jnp.sqrt(jnp.sum(jnp.where(pos, (x - mean) ** 2, 0.0)) / jnp.maximum(k, 1))
    cv = jnp.where((k > 0) & (mean != 0), std / (mean + eps), 0.0)
    sq = jnp.sum(xz * xz)
    jain = jnp.where(sq > 0, jnp.sum(xz) ** 2 / (jnp.maximum(k, 1) * jnp.where(sq > 0, sq, 1.0)), 0.0)
    m_ = jnp.minimum(jnp.asarray(m, jnp.float32), n)
    sel_gap = jnp.max(jnp.abs(c - m_ * t / n))
    seen = a > 0
    rate = c / jnp.where(seen, a, 1.0)
    cond_gap = jnp.where(jnp.any(seen), jnp.max(jnp.where(seen, rate, -jnp.inf))
                         - jnp.min(jnp.where(seen, rate, jnp.inf)), 0.0)
    tail = max(1, math.ceil(0.1 * n))
    return {"utility_cv": cv, "utility_jain": jain, "selection_gap": sel_gap,
            "conditional_selection_gap": cond_gap,
            "participation_gini": count_gini(participation_counts),
            "worst10_utility": smallest_mean(xz, tail)}
