"""The selector interface and the per-client history every selector shares.

Holds, in order:

- the types: :class:`Selection` (K fixed slots and a validity mask),
  :class:`Feedback` (what a round reports back), :class:`SelectorState` (the
  shared per-client history) and :class:`Selector` ``(init, select, update,
  full_participation)``;
- the shared history: :func:`init_state`, :func:`update_state`,
  :func:`availability_estimate`;
- the round's helpers: :func:`round_slots` (K for a selector), :func:`slot_mask`
  (scattering a per-slot mask onto the clients), :func:`selection_mask`,
  :func:`make_feedback`;
- the helpers strategies are built from: ``_check_call`` (``select``'s static
  argument checks), ``_top_k`` (the K best-scoring available clients),
  ``_gumbel`` and ``_selector`` (wraps a ``select`` function into a jitted
  :class:`Selector` with the shared ``init``/``update``).

A strategy module imports from here only; this module imports no strategy.

Example:
  >>> st = init_state(jnp.ones((3, 2)))
  >>> fb = make_feedback(jnp.array([True, True, False]),
  ...                    Selection(jnp.array([1, 0]), jnp.array([True, False])),
  ...                    jnp.zeros(2, bool), jnp.array([0.0, 0.4, 0.0]), jnp.zeros(3))
  >>> st = update_state(st, fb)
  >>> st.missed.tolist(), [round(u, 3) for u in st.cum_utility.tolist()]
  ([1, 0, 0], [0.0, 0.4, 0.0])
"""

from __future__ import annotations

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
      valid: bool[K]  # slot holds a selected client that trains (S = 1 and A = 1); valid slots come first
      probs: f32[K] | None  # inclusion probability q of each slot's client given
        # availability (samplers that know it: ``cup``; 0 in padding); None otherwise
      intent: bool[K] | None  # slot holds a selected client (S = 1), available or not;
        # None means the same as ``valid``. Only selectors that pick from the whole
        # population (``fedavg_random``) set it: ``intent & ~valid`` slots were
        # selected but are unavailable, so they must not train (S = 1, P = 0).
    """

    slots: Array
    valid: Array
    probs: Array | None = None
    intent: Array | None = None


class Feedback(NamedTuple):
    """What a round tells the selector after training and evaluation.

    Attributes:
      available: bool[C]  # available this round
      selected: bool[C]  # selected this round (from slots/valid)
      participated: bool[C]  # selected and its update was used (not failed / dropped)
      utility: f32[C]  # global-model accuracy on the client's own test data, after aggregation
      loss: f32[C]  # global-model loss on the client's data
      gain: f32[C] | None  # utility increment Delta u_k(t) of REFERENCE B.1 step 8 (for
        # ``cup``; None: ``cup`` takes the change of ``utility`` since the last round)
      loss_before: f32[C] | None  # F_k(w_t): the global model's loss on k's training
        # data before local training (participants; ``fairfedcs``), None if not measured
      local_loss: f32[C] | None  # k's final local training loss (participants), or None
      budget: i32[] | None  # m' = min(m, C), the round's number of slots (``fairfedcs``)
    """

    available: Array
    selected: Array
    participated: Array
    utility: Array
    loss: Array
    gain: Array | None = None
    loss_before: Array | None = None
    local_loss: Array | None = None
    budget: Array | None = None


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
      full_participation: the strategy takes every available client, so a
        round gives it one slot per client (K = C) whatever
        ``clients_per_round`` says; set by :func:`full`.
    """

    init: Callable[[Array], Any]
    select: Callable[[Any, Array, Array, int], Selection]
    update: Callable[[Any, Feedback], Any]
    full_participation: bool = False


# ---------------------------------------------------------------------------
# The shared history.


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


_update_jit = jax.jit(update_state)


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


# ---------------------------------------------------------------------------
# The round's helpers.


def round_slots(selector: Selector, num_clients: int, clients_per_round: int) -> int:
    """K, the number of slots a round gives ``selector``: C for full participation.

    Args:
      selector: a :class:`Selector`.
      num_clients: C.
      clients_per_round: the configured K.

    Returns:
      ``num_clients`` if ``selector.full_participation`` else ``clients_per_round``.

    Example:
      >>> from fsjax.selection import full, random
      >>> round_slots(full(), 10, 3), round_slots(random(), 10, 3)
      (10, 3)
    """
    return int(num_clients) if selector.full_participation else int(clients_per_round)


def slot_mask(slots: Array, mask: Array, num_clients: int) -> Array:
    """bool[C]: True for each client that a slot with ``mask`` True names.

    The one slot-to-client scatter of a round: the simulation's ``selected``
    (``mask = valid``) and ``participated`` (``mask`` = update used) masks, and
    :func:`selection_mask`. Padding slots (``mask`` False) leave their client
    untouched; a client named by several slots is True if any of them is.

    Args:
      slots: i32[K] client index of each slot.
      mask: bool[K] which slots count.
      num_clients: C, a static Python int.

    Returns:
      bool[C].

    Example:
      >>> slot_mask(jnp.array([2, 0, 0]), jnp.array([True, True, False]), 4).tolist()
      [True, False, True, False]
    """
    return jnp.zeros((num_clients,), bool).at[slots].max(jnp.asarray(mask, bool))


def selection_mask(selection: Selection, num_clients: int) -> Array:
    """bool[C]: which clients hold a valid slot (:func:`slot_mask` of ``valid``).

    Example:
      >>> selection_mask(Selection(jnp.array([2, 0]), jnp.array([True, False])), 3).tolist()
      [False, False, True]
    """
    return slot_mask(selection.slots, selection.valid, num_clients)


def make_feedback(available: Array, selection: Selection, failed: Array, utility: Array,
                  loss: Array) -> Feedback:
    """Builds a round's :class:`Feedback` from its selection and its failed slots.

    ``selected`` and ``participated`` are :func:`slot_mask` of ``valid`` and of
    ``valid & ~failed``; this is how the simulation reports a round to the
    selector (it passes ``failed = ~used`` for the slots whose update it used).

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
    c = jnp.shape(available)[0]
    used = selection.valid & ~jnp.asarray(failed, bool)
    return Feedback(available=jnp.asarray(available, bool),
                    selected=slot_mask(selection.slots, selection.valid, c),
                    participated=slot_mask(selection.slots, used, c), utility=utility, loss=loss)


# ---------------------------------------------------------------------------
# What strategies are built from.


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
    """f32 standard Gumbel noise of ``shape`` (for Gumbel-top-k sampling)."""
    return jax.random.gumbel(key, shape, jnp.float32)


def _selector(select: Callable, full_participation: bool = False) -> Selector:
    """A :class:`Selector` from a strategy's ``select``, with the shared history.

    Every strategy keeps :class:`SelectorState` (``init`` = :func:`init_state`,
    ``update`` = :func:`update_state`), so a new one only writes ``select``.

    Args:
      select: ``select(state, available, key, num_slots) -> Selection``; it
        should start with ``_check_call`` and is jitted with ``num_slots`` static.
      full_participation: see :class:`Selector`.

    Returns:
      A :class:`Selector`.
    """
    # jit here too (num_slots static) so eager callers compile the greedy loop
    # once per selector instead of on every call; inside an outer jit it inlines.
    return Selector(init_state, jax.jit(select, static_argnums=3), _update_jit, full_participation)
