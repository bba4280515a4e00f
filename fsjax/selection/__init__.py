"""Client selection: which available clients train in a round.

A selector is a :class:`Selector` ``(init, select, update)`` of pure functions:

- ``init(label_hist: f32[C, L]) -> state`` from each client's label counts;
- ``select(state, available: bool[C], key, num_slots) -> Selection``: K fixed
  slots (client indices) and a validity mask; valid slots come first, there are
  exactly ``min(K, #available)`` of them and they never name an unavailable
  client (except ``fedavg_random``: see ``Selection.intent``); ``num_slots``
  is a static Python int;
- ``update(state, feedback: Feedback) -> state`` after the round;
- ``full_participation``: True when the round must give it K = C slots.

Factories (``REGISTRY[name](**params)``, the only dispatch on names): ``full``,
``random`` (PSP), ``aw_psp``, ``power_of_choice(d)``, ``fair_select(lam)``
(fsjax's own greedy variant), ``cup`` (the CUP scheduler of REFERENCE.md
B.2) and the CUP study's baselines (B.3): ``fedavg_random`` (from the whole
population: a chosen unavailable client has ``Selection.intent`` True and
``valid`` False), ``uniform_available``, ``fairfedcs``, ``least_selected``,
``inverse_availability``, ``estimated_availability``, ``round_robin``. All
selectors keep :class:`SelectorState`, the per-client history the round
reports through :class:`Feedback` (``cup``, ``fairfedcs`` and
``round_robin`` inside their own state, as its ``base``).

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
- :mod:`~fsjax.selection.cup_scheduler`: CUP (:func:`inclusion_probabilities`,
  :func:`dependent_rounding` (the study's pivotal sampler, the default) and
  :func:`systematic_sampling` (O(C) parallel, exact size and marginals;
  ``cup(sampler="systematic")``), :func:`cup_scores`,
  :func:`oracle_maxmin_scores`, :class:`CupState`, :func:`cup`).
- :mod:`~fsjax.selection.population_baselines`: the CUP study's baselines.

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
from fsjax.selection.cup_scheduler import (SAMPLERS, CupState, cup, cup_scores,
                                           dependent_rounding, first_true,
                                           inclusion_probabilities, oracle_maxmin_scores,
                                           systematic_sampling)
from fsjax.selection.fair_selector import fair_select, fair_select_scores, surrogate_utility
from fsjax.selection.population_baselines import (estimated_availability, fairfedcs,
                                                  fedavg_random, inverse_availability,
                                                  least_selected, round_robin,
                                                  uniform_available)

REGISTRY: dict[str, Callable[..., Selector]] = {
    "full": full,
    "random": random,
    "aw_psp": aw_psp,
    "power_of_choice": power_of_choice,
    "fair_select": fair_select,
    # The CUP study (REFERENCE.md B.2, B.3): cup_scheduler, population_baselines.
    "cup": cup,
    "fedavg_random": fedavg_random,
    "uniform_available": uniform_available,
    "fairfedcs": fairfedcs,
    "least_selected": least_selected,
    "inverse_availability": inverse_availability,
    "estimated_availability": estimated_availability,
    "round_robin": round_robin,
}

__all__ = [
    "REGISTRY", "Array", "Feedback", "Selection", "Selector", "SelectorState",
    "availability_estimate", "aw_psp", "fair_select", "fair_select_scores", "full",
    "init_state", "make_feedback", "power_of_choice", "random", "round_slots",
    "selection_mask", "slot_mask", "surrogate_utility", "update_state",
    "CupState", "cup", "cup_scores", "dependent_rounding", "estimated_availability", "fairfedcs",
    "fedavg_random", "inclusion_probabilities", "inverse_availability", "least_selected",
    "oracle_maxmin_scores", "round_robin", "uniform_available",
    "SAMPLERS", "first_true", "systematic_sampling",
]
