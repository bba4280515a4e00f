"""Client selection: which available clients train in a round.

A selector is a :class:`Selector` ``(init, select, update)`` of pure functions:

- ``init(label_hist: f32[C, L]) -> state`` from each client's label counts;
- ``select(state, available: bool[C], key, num_slots) -> Selection``: K fixed
  slots (client indices) and a validity mask; valid slots come first, there are
  exactly ``min(K, #available)`` of them and they never name an unavailable
  client; ``num_slots`` is a static Python int;
- ``update(state, feedback: Feedback) -> state`` after the round.

Factories (``REGISTRY[name](**params)``): ``full``, ``random`` (PSP),
``aw_psp``, ``power_of_choice(d)``, ``fair_select(lam)`` (cumulative utility
parity, REFERENCE.md section B). All selectors share :class:`SelectorState`, the
per-client history the round reports through :class:`Feedback`.

Example:
  >>> import jax, jax.numpy as jnp
  >>> sel = fair_select(lam=0.5)
  >>> state = sel.init(jnp.eye(4, 10))          # 4 clients, one label each
  >>> s = sel.select(state, jnp.array([True, False, True, True]), jax.random.key(0), 2)
  >>> s.valid.tolist(), bool(s.slots[0] != 1) and bool(s.slots[1] != 1)
  ([True, True], True)
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Finite stand-in for +-inf scores of *available* clients, so only unavailable
# clients sit at -inf and the valid slots are exactly the available ones.
_BIG = 1e30


class Selection(NamedTuple):
    """The clients chosen for a round, in K fixed slots.

    Attributes:
      slots: i32[K]  # client indices; invalid slots hold 0 (padding)
      valid: bool[K]  # slot holds a selected client; valid slots come first
    """

    slots: Array
    valid: Array


class Feedback(NamedTuple):
    """What a round tells the selector after training and evaluation.

    Attributes:
      available: bool[C]  # available this round
      selected: bool[C]  # selected this round (from slots/valid)
      participated: bool[C]  # selected and its update was used (not failed / dropped)
      utility: f32[C]  # global-model accuracy on the client's own test data, after aggregation
      loss: f32[C]  # global-model loss on the client's data
    """

    available: Array
    selected: Array
    participated: Array
    utility: Array
    loss: Array


class SelectorState(NamedTuple):
    """Per-client history shared by every selector.

    Attributes:
      rounds: i32[]  # rounds of feedback received
      available: i32[C]  # rounds available
      selected: i32[C]  # rounds selected
      participated: i32[C]  # rounds whose update was used
      missed: i32[C]  # rounds available but not selected (m_k)
      cum_utility: f32[C]  # sum of utility over the rounds participated
      loss: f32[C]  # last reported loss (0 before any feedback)
      label_dist: f32[C, L]  # each client's label distribution (rows sum to 1, or 0 if no data)
      data_size: f32[C]  # examples per client (row sums of label_hist)
    """

    rounds: Array
    available: Array
    selected: Array
    participated: Array
    missed: Array
    cum_utility: Array
    loss: Array
    label_dist: Array
    data_size: Array


class Selector(NamedTuple):
    """A client selection strategy.

    Attributes:
      init: ``init(label_hist: f32[C, L]) -> state``.
      select: ``select(state, available: bool[C], key, num_slots: int) -> Selection``.
      update: ``update(state, feedback: Feedback) -> state``.
    """

    init: Callable[[Array], Any]
    select: Callable[[Any, Array, Array, int], Selection]
    update: Callable[[Any, Feedback], Any]


# ---------------------------------------------------------------------------
# Shared pieces.


def init_state(label_hist: Any) -> SelectorState:
    """Empty history for C clients with the given label counts.

    Args:
      label_hist: f32[C, L] label counts per client (C from its shape).

    Returns:
      A :class:`SelectorState` with all counters at zero.

    Example:
      >>> init_state(jnp.ones((3, 10))).missed.shape
      (3,)
    """
    hist = jnp.asarray(label_hist, jnp.float32)
    if hist.ndim != 2 or hist.shape[0] < 1 or hist.shape[1] < 1:
        raise ValueError(f"label_hist has shape {hist.shape}: expected f32[C, L] label counts "
                         "with C, L >= 1")
    c = hist.shape[0]
    size = hist.sum(axis=1)
    dist = hist / jnp.where(size > 0, size, 1.0)[:, None]
    zeros_i = jnp.zeros((c,), jnp.int32)
    return SelectorState(rounds=jnp.zeros((), jnp.int32), available=zeros_i, selected=zeros_i,
                         participated=zeros_i, missed=zeros_i,
                         cum_utility=jnp.zeros((c,), jnp.float32), loss=jnp.zeros((c,), jnp.float32),
                         label_dist=dist, data_size=size)


def update_state(state: SelectorState, feedback: Feedback) -> SelectorState:
    """Adds one round of feedback to the history.

    Cumulative utility grows only in rounds the client participated (REFERENCE B:
    "sums what a client received over the rounds it participated in"); a NaN
    utility counts as 0 and a non-finite loss is clipped so later scores stay
    finite.

    Args:
      state: the history so far.
      feedback: this round's :class:`Feedback`.

    Returns:
      The updated :class:`SelectorState`.

    Example:
      >>> s = init_state(jnp.ones((2, 3)))
      >>> fb = Feedback(*(jnp.array([True, True]),) * 2, jnp.array([True, False]),
      ...               jnp.array([0.5, 0.9]), jnp.zeros(2))
      >>> update_state(s, fb).cum_utility.tolist()
      [0.5, 0.0]
    """
    avail = jnp.asarray(feedback.available, bool)
    sel = jnp.asarray(feedback.selected, bool)
    part = jnp.asarray(feedback.participated, bool)
    util = jnp.nan_to_num(jnp.asarray(feedback.utility, jnp.float32), nan=0.0)
    loss = jnp.nan_to_num(jnp.asarray(feedback.loss, jnp.float32), nan=0.0, posinf=_BIG, neginf=-_BIG)
    return state._replace(
        rounds=state.rounds + 1,
        available=state.available + avail,
        selected=state.selected + sel,
        participated=state.participated + part,
        missed=state.missed + (avail & ~sel),
        cum_utility=state.cum_utility + jnp.where(part, util, 0.0),
        loss=loss,
    )


@jax.jit
def availability_estimate(state: SelectorState) -> Array:
    """pi_k: the estimated probability that client k is available.

    The fraction of past rounds available with Laplace (Beta(1, 1)) smoothing,
    ``pi_k = (a_k + 1) / (n + 2)``: 1/2 before any history, never 0 or 1, so
    ``1 / pi_k`` is always finite.

    Args:
      state: a :class:`SelectorState`.

    Returns:
      f32[C] in (0, 1).

    Example:
      >>> availability_estimate(init_state(jnp.ones((2, 3)))).tolist()
      [0.5, 0.5]
    """
    return (state.available + 1.0) / (state.rounds + 2.0)


def selection_mask(selection: Selection, num_clients: int) -> Array:
    """bool[C]: which clients hold a valid slot.

    Example:
      >>> selection_mask(Selection(jnp.array([2, 0]), jnp.array([True, False])), 3).tolist()
      [False, False, True]
    """
    hits = jnp.zeros((num_clients,), jnp.int32).at[selection.slots].add(selection.valid.astype(jnp.int32))
    return hits > 0


def make_feedback(available: Array, selection: Selection, failed: Array, utility: Array,
                  loss: Array) -> Feedback:
    """Builds a :class:`Feedback` from a round's selection and its failed slots.

    Args:
      available: bool[C] availability this round.
      selection: the round's :class:`Selection` (K slots).
      failed: bool[K] slots whose update was not used.
      utility: f32[C] per-client utility after aggregation.
      loss: f32[C] per-client loss of the global model.

    Returns:
      A :class:`Feedback`; ``participated`` = valid and not failed.

    Example:
      >>> fb = make_feedback(jnp.array([True, True]), Selection(jnp.array([1]), jnp.array([True])),
      ...                    jnp.array([True]), jnp.zeros(2), jnp.zeros(2))
      >>> fb.selected.tolist(), fb.participated.tolist()
      ([False, True], [False, False])
    """
    c = available.shape[0]
    used = Selection(selection.slots, selection.valid & ~jnp.asarray(failed, bool))
    return Feedback(available=jnp.asarray(available, bool), selected=selection_mask(selection, c),
                    participated=selection_mask(used, c), utility=utility, loss=loss)


def _check_call(state: SelectorState, available: Array, num_slots: Any) -> tuple[int, int]:
    """Python-side check of ``select``'s static arguments; returns (C, K)."""
    c = state.available.shape[0]
    if jnp.shape(available) != (c,):
        raise ValueError(f"available has shape {jnp.shape(available)}: expected bool[{c}] "
                         "(one flag per client the selector was initialised with)")
    if isinstance(num_slots, bool) or not isinstance(num_slots, (int, np.integer)):
        raise ValueError(f"num_slots={num_slots!r}: expected a static Python int")
    if not 1 <= num_slots <= c:
        raise ValueError(f"num_slots={num_slots!r}: expected 1 <= K <= number of clients C={c}")
    return c, int(num_slots)


def _top_k(score: Array, mask: Array, key: Array | None, k: int) -> Selection:
    """The k highest-scoring clients in ``mask``, ties broken uniformly at random.

    Unmasked clients score -inf; masked scores are made finite, so the valid
    slots are exactly the first ``min(k, mask.sum())``.
    """
    c = score.shape[0]
    s = jnp.clip(jnp.nan_to_num(score.astype(jnp.float32), nan=-_BIG), -_BIG, _BIG)
    s = jnp.where(mask, s, -jnp.inf)
    if key is None:
        _, slots = jax.lax.top_k(s, k)  # ties -> lower index first
    else:
        # top_k keeps ties in index order, so permuting first randomises them
        # (argsort of uniforms: one sort, cheaper than jax.random.permutation).
        perm = jnp.argsort(jax.random.uniform(key, (c,)))
        _, idx = jax.lax.top_k(s[perm], k)
        slots = perm[idx]
    valid = jnp.arange(k) < jnp.sum(mask)
    return Selection(slots=jnp.where(valid, slots, 0).astype(jnp.int32), valid=valid)


def _gumbel(key: Array, shape) -> Array:
    return jax.random.gumbel(key, shape, jnp.float32)


def _selector(select: Callable) -> Selector:
    # jit here too (num_slots static) so eager callers compile the greedy loop
    # once per selector instead of on every call; inside an outer jit it inlines.
    return Selector(init_state, jax.jit(select, static_argnums=3), _update_jit)


_update_jit = jax.jit(update_state)


# ---------------------------------------------------------------------------
# Baselines.


def full() -> Selector:
    """Full participation: every available client, up to K, lowest index first.

    The simulation sets K = C for full participation; with a smaller K this
    takes the first K available clients by index (deterministic).

    Returns:
      A :class:`Selector`.

    Example:
      >>> sel = full(); st = sel.init(jnp.ones((3, 2)))
      >>> sel.select(st, jnp.array([True, False, True]), jax.random.key(0), 3).slots.tolist()
      [0, 2, 0]
    """

    def select(state, available, key, num_slots):
        c, k = _check_call(state, available, num_slots)
        del key
        return _top_k(-jnp.arange(c, dtype=jnp.float32), available, None, k)

    return _selector(select)


def random() -> Selector:
    """PSP: K clients uniformly at random among the available (without replacement).

    Returns:
      A :class:`Selector`.

    Example:
      >>> sel = random(); st = sel.init(jnp.ones((3, 2)))
      >>> sel.select(st, jnp.array([True, False, True]), jax.random.key(0), 2).valid.tolist()
      [True, True]
    """

    def select(state, available, key, num_slots):
        c, k = _check_call(state, available, num_slots)
        # The top K of i.i.d. uniforms is a uniform K-subset.
        return _top_k(jax.random.uniform(key, (c,)), available, None, k)

    return _selector(select)


def aw_psp() -> Selector:
    """AW-PSP: availability-weighted sampling among the available.

    Draws K clients without replacement with probability proportional to
    ``pi_k`` (:func:`availability_estimate`) by successive sampling, done in
    one pass as Gumbel-top-k on ``log pi_k`` (the Plackett-Luce law).

    Returns:
      A :class:`Selector`.

    Example:
      >>> sel = aw_psp(); st = sel.init(jnp.ones((3, 2)))
      >>> int(sel.select(st, jnp.array([True, False, True]), jax.random.key(0), 3).valid.sum())
      2
    """

    def select(state, available, key, num_slots):
        c, k = _check_call(state, available, num_slots)
        score = jnp.log(availability_estimate(state)) + _gumbel(key, (c,))
        return _top_k(score, available, None, k)

    return _selector(select)


def power_of_choice(d: int = 10) -> Selector:
    """Power-of-choice (Cho et al., 2020): the K highest-loss of d sampled clients.

    A candidate set of ``max(d, K)`` available clients is drawn without
    replacement with probability proportional to data size (Gumbel-top-d on
    ``log n_k``); from it the K with the highest loss are selected. The loss is
    the latest one reported in :class:`Feedback` (the global model's loss on
    the client's data after the previous round, 0 before any feedback, so the
    first round is uniform among candidates); ties are broken at random.
    ``d < K`` acts as ``d = K`` since the candidate set must hold K clients.

    Args:
      d: candidate set size, >= 1.

    Returns:
      A :class:`Selector`.

    Raises:
      ValueError: ``d < 1`` or not an integer.

    Example:
      >>> sel = power_of_choice(d=2); st = sel.init(jnp.ones((3, 2)))
      >>> int(sel.select(st, jnp.ones(3, bool), jax.random.key(0), 1).valid.sum())
      1
    """
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d={d!r}: expected an integer candidate-set size >= 1")

    def select(state, available, key, num_slots):
        c, k = _check_call(state, available, num_slots)
        k_cand, k_tie = jax.random.split(key)
        size_score = jnp.log(state.data_size + 1e-12) + _gumbel(k_cand, (c,))
        cand = _top_k(size_score, available, None, min(max(int(d), k), c))
        cand_mask = selection_mask(cand, c)
        return _top_k(state.loss, cand_mask, k_tie, k)

    return _selector(select)


# ---------------------------------------------------------------------------
# Fair-Select (cumulative utility parity).


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
      gives REFERENCE B's score exactly.

    Args:
      state: a :class:`SelectorState`.
      lam: weight of missed rounds, >= 0 (study: 0.5).
      mu: weight of the cumulative-utility deficit, >= 0.

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
    """Fair-Select (CUP): cumulative utility parity under intermittent availability.

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
      lam: weight of missed rounds, >= 0 (study: 0.5).
      mu: weight of the cumulative-utility deficit, >= 0 (0 = REFERENCE B's score).
      coverage: prefer clients adding uncovered labels.

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


REGISTRY: dict[str, Callable[..., Selector]] = {
    "full": full,
    "random": random,
    "aw_psp": aw_psp,
    "power_of_choice": power_of_choice,
    "fair_select": fair_select,
}
