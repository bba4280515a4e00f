"""The baseline selectors: ``full``, ``random`` (PSP), ``aw_psp``, ``power_of_choice``.

Each factory returns a :class:`~fsjax.selection.core.Selector` that keeps the
shared :class:`~fsjax.selection.core.SelectorState` history and differs only
in ``select``: the score it ranks the available clients by before
``_top_k`` fills the K slots.

- :func:`full`: every available client (a round gives it K = C slots);
- :func:`random`: PSP, a uniform K-subset of the available clients;
- :func:`aw_psp`: availability-weighted sampling (Gumbel-top-k on ``log pi_k``);
- :func:`power_of_choice`: the K highest-loss of ``d`` size-weighted candidates.

Example:
  >>> sel = random(); st = sel.init(jnp.ones((4, 2)))
  >>> s = sel.select(st, jnp.array([True, False, True, True]), jax.random.key(0), 2)
  >>> s.valid.tolist(), 1 in s.slots.tolist()
  ([True, True], False)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fsjax.selection.core import (Selector, _check_call, _gumbel, _selector, _top_k,
                                  availability_estimate, selection_mask)


def full() -> Selector:
    """Full participation: every available client, up to K, lowest index first.

    Marked ``full_participation``, so the round gives it K = C slots
    (:func:`round_slots`); with a smaller K this takes the first K available
    clients by index (deterministic).

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

    return _selector(select, full_participation=True)


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
