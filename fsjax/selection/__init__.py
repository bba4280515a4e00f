"""Client selection: which available clients train in a round.

A selector is a :class:`Selector` ``(init, select, update)`` of pure functions:

- ``init(label_hist: f32[C, L]) -> state`` from each client's label counts;
- ``select(state, available: bool[C], key, num_slots) -> Selection``: K fixed
  slots (client indices) and a validity mask; valid slots come first, there are
  exactly ``min(K, #available)`` of them and they never name an unavailable
  client; ``num_slots`` is a static Python int;
- ``update(state, feedback: Feedback) -> state`` after the round;
- ``full_participation``: True when the round must give it K = C slots.

Factories (``REGISTRY[name](**params)``, the only dispatch on names): ``full``,
``random`` (PSP), ``aw_psp``, ``power_of_choice(d)``, ``fair_select(lam)``
(cumulative utility parity, REFERENCE.md section B). All selectors share
:class:`SelectorState`, the per-client history the round reports through
:class:`Feedback`.

Layout (every public name is re-exported here, so ``fsjax.selection.X`` works):

- :mod:`~fsjax.selection.core`: the types (:class:`Selection`,
  :class:`Feedback`, :class:`SelectorState`, :class:`Selector`); the shared
  history (:func:`init_state`, :func:`update_state`,
  :func:`availability_estimate`); the round's helpers (:func:`round_slots` for
  K, :func:`slot_mask` scattering a per-slot mask onto the clients,
  :func:`selection_mask`, :func:`make_feedback`); and what strategies are
  built from (``_check_call``, ``_top_k``, ``_gumbel``, ``_selector``).
- :mod:`~fsjax.selection.baselines`: ``full``, ``random`` (PSP), ``aw_psp``,
  ``power_of_choice``.
- :mod:`~fsjax.selection.fair_selector`: Fair-Select (:func:`surrogate_utility`,
  :func:`fair_select_scores`, the greedy label cover, :func:`fair_select`).

A new strategy is one factory (in its own module, or in ``baselines`` if it is
a few lines) built with ``core._selector``, one line in :data:`REGISTRY` below
and its tests. Name a new module differently from every name re-exported here
(``fsjax.selection.random`` must stay the factory, not a module): e.g. a
``cup`` factory lives in ``cup_scheduler.py``, not ``cup.py``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> sel = fair_select(lam=0.5)
  >>> state = sel.init(jnp.eye(4, 10))          # 4 clients, one label each
  >>> s = sel.select(state, jnp.array([True, False, True, True]), jax.random.key(0), 2)
  >>> s.valid.tolist(), bool(s.slots[0] != 1) and bool(s.slots[1] != 1)
  ([True, True], True)
"""

from __future__ import annotations

from typing import Callable

from fsjax.selection.baselines import aw_psp, full, power_of_choice, random
from fsjax.selection.core import (Array, Feedback, Selection, Selector, SelectorState,
                                  availability_estimate, init_state, make_feedback, round_slots,
                                  selection_mask, slot_mask, update_state)
from fsjax.selection.fair_selector import fair_select, fair_select_scores, surrogate_utility

REGISTRY: dict[str, Callable[..., Selector]] = {
    "full": full,
    "random": random,
    "aw_psp": aw_psp,
    "power_of_choice": power_of_choice,
    "fair_select": fair_select,
}

__all__ = [
    "REGISTRY", "Array", "Feedback", "Selection", "Selector", "SelectorState",
    "availability_estimate", "aw_psp", "fair_select", "fair_select_scores", "full",
    "init_state", "make_feedback", "power_of_choice", "random", "round_slots",
    "selection_mask", "slot_mask", "surrogate_utility", "update_state",
]
