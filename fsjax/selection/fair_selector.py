"""Fair-Select: fsjax's own greedy participation-fairness selector (not CUP).

An older reading of the cumulative-utility-parity study; the CUP scheduler the
study's paper evaluates is :func:`fsjax.selection.cup` (REFERENCE.md B.2).
Fair-Select's deficit factor ``(1 + mu d_k)`` and label-coverage preference
are fsjax's additions, which the study never had.

Holds, in the order a round uses them:

- :func:`surrogate_utility`: per-participation utility ``u_k``, with a
  label-similarity surrogate for clients without history;
- :func:`fair_select_scores`: ``(1/pi_k)(1 + lam m_k)(1 + mu d_k)``;
- ``_greedy_cover``: fills the K slots greedily by score, preferring clients
  that add a label not yet covered this round;
- :func:`fair_select`: the factory.

(The module is not named ``fair_select.py`` so that ``fsjax.selection.fair_select``
stays the factory function.)

Example:
  >>> sel = fair_select(lam=0.5)
  >>> state = sel.init(jnp.eye(4, 10))          # 4 clients, one label each
  >>> s = sel.select(state, jnp.array([True, False, True, True]), jax.random.key(0), 2)
  >>> s.valid.tolist(), bool(s.slots[0] != 1) and bool(s.slots[1] != 1)
  ([True, True], True)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fsjax.selection.core import (Array, Selection, Selector, SelectorState, _check_call,
                                  _selector, availability_estimate)
from fsjax.selection.core import init_state  # noqa: F401  (the examples use it)


@jax.jit
def surrogate_utility(state: SelectorState) -> Array:
    """Per-participation utility estimate, with a surrogate for clients without history.

    For a client that participated, ``u_k = U_k / p_k`` (cumulative utility over
    participation count). For one that never did, the surrogate is the mean of
    ``u_j`` over clients j with history, weighted by label similarity
    ``w_kj = <q_k, q_j>`` (inner product of label distributions: for clients
    holding equal shares of a few labels it is proportional to the number of
    shared labels, and 0 for disjoint label sets). Computed in O(C L) through
    per-label sums. With no similar client with history it falls back to the
    plain mean over clients with history, and to 0 before any history.

    Args:
      state: a :class:`SelectorState`.

    Returns:
      f32[C].

    Example:
      >>> st = init_state(jnp.array([[1., 0], [1., 0], [0., 1]]))
      >>> st = st._replace(participated=jnp.array([2, 0, 0]), cum_utility=jnp.array([1.2, 0, 0]))
      >>> [round(x, 3) for x in surrogate_utility(st).tolist()]
      [0.6, 0.6, 0.6]
    """
    has = state.participated > 0
    own = state.cum_utility / jnp.maximum(state.participated, 1)
    q = state.label_dist
    h = has.astype(jnp.float32)
    num = q @ (q.T @ (h * own))
    den = q @ (q.T @ h)
    n_hist = h.sum()
    overall = jnp.where(n_hist > 0, (h * own).sum() / jnp.maximum(n_hist, 1.0), 0.0)
    peer = jnp.where(den > 1e-12, num / jnp.where(den > 1e-12, den, 1.0), overall)
    return jnp.where(has, own, peer)


@jax.jit
def fair_select_scores(state: SelectorState, lam: float = 0.5, mu: float = 1.0) -> Array:
    """Fair-Select's score per client (before label coverage).

    ``score_k = (1 / pi_k) * (1 + lam * m_k) * (1 + mu * d_k)`` where

    - ``pi_k`` = :func:`availability_estimate` (rarely available clients first),
    - ``m_k`` = rounds available but not selected (overlooked clients first),
    - ``d_k`` in [0, 1] is the cumulative-utility deficit: with
      ``V_k = U_k + u_k`` the client's cumulative utility after one more
      participation (``u_k`` from :func:`surrogate_utility`, so new clients are
      projected like their label peers rather than at 0 or at infinity),
      ``d_k = (max V - V_k) / (max V - min V)`` (0 when all are equal). Clients
      behind in cumulative utility get up to ``1 + mu`` times the score,
      moving the population towards cumulative utility parity; ``mu = 0``
      leaves ``(1 / pi_k)(1 + lam m_k)``, the older reading's score.

    Args:
      state: a :class:`SelectorState`.
      lam: weight of missed rounds, >= 0 (default 0.5).
      mu: weight of the cumulative-utility deficit, >= 0 (default 1; fsjax's).

    Returns:
      f32[C], all > 0.

    Example:
      >>> fair_select_scores(init_state(jnp.ones((2, 3)))).tolist()
      [2.0, 2.0]
    """
    pi = availability_estimate(state)
    projected = state.cum_utility + surrogate_utility(state)
    lo, hi = projected.min(), projected.max()
    spread = hi - lo
    deficit = jnp.where(spread > 0, (hi - projected) / jnp.where(spread > 0, spread, 1.0), 0.0)
    return (1.0 / pi) * (1.0 + lam * state.missed) * (1.0 + mu * deficit)


def _greedy_cover(score: Array, labels: Array, available: Array, key: Array, k: int,
                  coverage: bool) -> Selection:
    """Greedy pick of k available clients by score, preferring new labels.

    Step i takes, among the not-yet-chosen available clients that hold a label
    no client chosen earlier this round holds (or among all of them when none
    does, or when ``coverage`` is off), the one with the highest score; scores
    within 1e-6 relative of the best tie and are broken uniformly at random.
    """
    c = score.shape[0]
    tiebreak = jax.random.uniform(key, (c,))  # distinct with probability 1

    def body(i, carry):
        chosen, covered, slots, valid = carry
        cand = available & ~chosen
        if coverage:
            adds = jnp.any(labels & ~covered[None, :], axis=1)
            pref = cand & adds
            cand = jnp.where(jnp.any(pref), pref, cand)
        best = jnp.max(jnp.where(cand, score, -jnp.inf))
        ties = cand & (score >= best - 1e-6 * jnp.abs(best))
        idx = jnp.argmax(jnp.where(ties, tiebreak, -1.0))
        ok = jnp.any(cand)
        chosen = chosen.at[idx].set(chosen[idx] | ok)
        covered = covered | (labels[idx] & ok)
        return chosen, covered, slots.at[i].set(jnp.where(ok, idx, 0)), valid.at[i].set(ok)

    init = (jnp.zeros((c,), bool), jnp.zeros((labels.shape[1],), bool),
            jnp.zeros((k,), jnp.int32), jnp.zeros((k,), bool))
    _, _, slots, valid = jax.lax.fori_loop(0, k, body, init)
    return Selection(slots=slots, valid=valid)


def fair_select(lam: float = 0.5, mu: float = 1.0, coverage: bool = True) -> Selector:
    """Fair-Select, fsjax's own variant (not the CUP scheduler: see :func:`~fsjax.selection.cup`).

    Scores every available client with :func:`fair_select_scores`
    ``(1/pi_k)(1 + lam m_k)(1 + mu d_k)`` and fills the K slots greedily by
    score, where each step prefers clients that add a label not yet covered by
    this round's earlier picks (a client covers the labels it holds data for;
    the preference is strict: a new-label client always beats one that adds
    none, and score decides within each group). The state records each
    client's availability, missed rounds, participation and cumulative utility
    (:class:`SelectorState`), so clients behind in cumulative utility
    (``d_k``), rarely available (``1/pi_k``) or repeatedly overlooked
    (``m_k``) come first; clients without history enter through a surrogate
    utility (mean of label-similar clients, :func:`surrogate_utility`).

    Args:
      lam: weight of missed rounds m_k, >= 0 (default 0.5).
      mu: weight of the cumulative-utility deficit d_k in [0, 1], >= 0 (default 1;
        fsjax's addition; 0 drops the factor).
      coverage: prefer clients adding labels this round does not cover yet
        (fsjax's addition).

    Returns:
      A :class:`Selector`.

    Raises:
      ValueError: ``lam < 0`` or ``mu < 0`` (or not finite).

    Example:
      >>> sel = fair_select(lam=0.5); st = sel.init(jnp.eye(3))
      >>> s = sel.select(st, jnp.array([True, True, False]), jax.random.key(0), 3)
      >>> sorted(s.slots[:2].tolist()), s.valid.tolist()
      ([0, 1], [True, True, False])
    """
    for name, v in (("lam", lam), ("mu", mu)):
        try:
            fv = float(v)
        except (TypeError, ValueError):
            fv = float("nan")
        if not (math.isfinite(fv) and fv >= 0.0):
            raise ValueError(f"{name}={v!r}: expected a finite number >= 0")
    lam_f, mu_f, cover = float(lam), float(mu), bool(coverage)

    def select(state, available, key, num_slots):
        _, k = _check_call(state, available, num_slots)
        score = fair_select_scores(state, lam_f, mu_f)
        return _greedy_cover(score, state.label_dist > 0, jnp.asarray(available, bool), key, k, cover)

    return _selector(select)
