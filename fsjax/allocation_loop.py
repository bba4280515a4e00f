"""Per-round split of local compute between the selected clients.

``allocation.name = "none"`` gives every selected client ``local.steps``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp


class StepAllocator(NamedTuple):
    init: Callable     # init() -> state
    steps: Callable    # steps(state, slots i32[K], valid bool[K], n i32[K]) -> i32[K]
    update: Callable   # update(state, slots, ok bool[K], steps i32[K], accuracy f32[C], loss f32[C]) -> state


def fixed_steps(max_steps: int) -> StepAllocator:
    """Every selected client trains ``max_steps`` steps."""

    def steps(state, slots, valid, n):
        return jnp.where(valid, max_steps, 0).astype(jnp.int32)

    return StepAllocator(lambda: (), steps, lambda state, *_: state)


def make(cfg, max_steps: int, num_slots: int, num_clients: int) -> StepAllocator:
    """The step allocator named by ``cfg.name`` (an AllocationConfig)."""
    del num_slots, num_clients
    if cfg.name == "none":
        return fixed_steps(max_steps)
    raise ValueError(f"allocation.name={cfg.name!r}: not available yet")
