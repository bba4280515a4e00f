"""Per-round split of local compute between the selected clients (FairSynergy in the loop).

Every round the K selected clients share a budget of local steps (by default
``K * local.steps``, the compute of uniform steps). With ``allocation.name =
"fairsynergy"`` the split solves FairSynergy's α-fair NUM problem
(:func:`fsjax.allocation.solve`) over learning curves fitted online:

- Each client's utility is its accuracy (``utility: accuracy``) or
  ``1 / (1 + loss)`` (``utility: loss``) under the global model, measured on
  its own test split after every round.
- Its resource is the number of local steps it has trained so far, ``x_c``.
  After each round it took part in, the point ``(x_c, u_c)`` enters a ring
  buffer of the last ``history`` points, and a power law
  ``u = scale * (x + e) ** gamma`` is fitted to them with
  :func:`fsjax.allocation.fit_power_law` (Levenberg-Marquardt). Until a client
  has three points it uses a prior curve anchored at its current utility
  (``gamma = 0.5``, ``e = local.steps``).
- Giving ``s`` more steps to client c is then worth ``scale * (s + x_c + e) **
  gamma``: a :class:`~fsjax.allocation.PowerLaw` whose ``e_init`` is what the
  client already holds, so FairSynergy gives steps where they buy the most
  α-fair welfare (α = 0 utilitarian, 1 proportional, large ~ max-min).

The real-valued allocation is rounded to integers by largest remainders (the
sum stays the budget, bounds hold), and the engine's per-client step counts
carry it without recompiling. ``uniform``, ``random`` and ``equalizing`` use
the same curves with FairSynergy's baselines; ``none`` gives every selected
client ``local.steps``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

PRIOR_GAMMA = 0.5
MIN_GAMMA = 0.05   # a flat or falling fitted curve is treated as nearly flat


class StepAllocator(NamedTuple):
    init: Callable     # init() -> state
    steps: Callable    # steps(state, slots i32[K], valid bool[K], key) -> i32[K]
    update: Callable   # update(state, slots, ok bool[K], steps i32[K], accuracy f32[C], loss f32[C]) -> state


class CurveState(NamedTuple):
    """Each client's learning-curve history."""

    trained: jax.Array   # f32[C]     local steps trained so far (x_c)
    hist_x: jax.Array    # f32[C, H]  ring buffer of x_c at the rounds it took part
    hist_u: jax.Array    # f32[C, H]  utility measured after those rounds
    count: jax.Array     # i32[C]     points recorded (may exceed H)
    utility: jax.Array   # f32[C]     latest utility of every client


def fixed_steps(steps_per_client: int) -> StepAllocator:
    """Every selected client trains ``steps_per_client`` steps."""

    def steps(state, slots, valid, key):
        return jnp.where(valid, steps_per_client, 0).astype(jnp.int32)

    return StepAllocator(lambda: (), steps, lambda state, *_: state)


def round_allocation(x: jax.Array, budget: jax.Array, upper: int, valid: jax.Array) -> jax.Array:
    """Integer steps from a real allocation by largest remainders.

    ``floor(x)`` plus one step for the slots with the largest fractional parts
    until the integer total reaches ``round(sum(x))`` (at most ``budget``);
    never above ``upper``, zero on invalid slots.
    """
    x = jnp.where(valid, jnp.clip(x, 0.0, upper), 0.0)
    base = jnp.floor(x)
    target = jnp.minimum(jnp.round(jnp.sum(x)), jnp.floor(budget))
    extra = (target - jnp.sum(base)).astype(jnp.int32)
    frac = jnp.where(valid & (base < upper), x - base, -1.0)
    rank = jnp.argsort(jnp.argsort(-frac))          # 0 = largest fractional part
    bump = (rank < extra) & (frac >= 0)
    return (base + bump).astype(jnp.int32)


def _utility_of(kind: str, accuracy: jax.Array, loss: jax.Array) -> jax.Array:
    u = accuracy if kind == "accuracy" else 1.0 / (1.0 + loss)
    return jnp.maximum(u, 1e-3)   # power-law utilities must be positive


def learning_curves(cfg, local_steps: int, num_slots: int, num_clients: int,
                    max_steps: int) -> StepAllocator:
    """FairSynergy (or a baseline) over online-fitted power-law curves; see module doc.

    Args:
      cfg: an ``AllocationConfig`` (name, alpha, budget, min_steps, utility, history).
      local_steps: ``local.steps``, the uniform per-client share.
      num_slots: K.
      num_clients: C.
      max_steps: most steps one client may get (the engine's scan length).
    """
    from fsjax import allocation  # the solver (and jaxopt) only when asked for

    solver = allocation.REGISTRY[cfg.name]
    h = cfg.history
    budget_full = float(cfg.budget or num_slots * local_steps)

    def init():
        return CurveState(jnp.zeros(num_clients), jnp.zeros((num_clients, h)),
                          jnp.zeros((num_clients, h)), jnp.zeros(num_clients, jnp.int32),
                          jnp.zeros(num_clients))

    def curves(state, slots):
        """PowerLaw for the clients in ``slots`` (fitted, or the prior)."""
        count = state.count[slots]
        # Fill the unused part of a ring with its recorded points, cyclically,
        # so every fit sees H points (repeated points weigh the same curve).
        pos = jnp.arange(h)[None, :] % jnp.maximum(jnp.minimum(count, h), 1)[:, None]
        hx = jnp.take_along_axis(state.hist_x[slots], pos, axis=1)
        hu = jnp.take_along_axis(state.hist_u[slots], pos, axis=1)
        # Clients with no history yet fit placeholder points; their fit is not used.
        fit = allocation.fit_power_law(hx, jnp.maximum(hu, 1e-3))
        trained, current = state.trained[slots], state.utility[slots]
        prior_e = jnp.full_like(trained, float(local_steps))
        prior_scale = jnp.maximum(current, 1e-3) / (trained + prior_e) ** PRIOR_GAMMA
        use_fit = (count >= 3) & fit.converged & jnp.isfinite(fit.scale)
        gamma = jnp.where(use_fit, jnp.clip(fit.gamma, MIN_GAMMA, 1.0), PRIOR_GAMMA)
        e = jnp.where(use_fit, fit.e_init, prior_e)
        scale = jnp.where(use_fit, fit.scale, prior_scale)
        return allocation.PowerLaw(gamma, trained + e, scale)

    def steps(state, slots, valid, key):
        n_valid = jnp.sum(valid)
        budget = budget_full * n_valid / num_slots
        lower = jnp.where(valid, float(cfg.min_steps), 0.0)
        out = solver(curves(state, slots), budget, alpha=cfg.alpha, lower=lower,
                     upper=float(max_steps), mask=valid, key=key)
        # An unconverged solve never steers training: that round splits evenly.
        uniform = jnp.where(valid, budget / jnp.maximum(n_valid, 1), 0.0)
        x = jnp.where(out.converged, out.allocation, uniform)
        return round_allocation(x, budget, max_steps, valid)

    def update(state, slots, ok, steps, accuracy, loss):
        u = _utility_of(cfg.utility, accuracy, loss)
        trained = state.trained.at[slots].add(jnp.where(ok, steps, 0).astype(jnp.float32))
        # Padding slots point at client 0 with ok=False: writes go out of range (dropped).
        target = jnp.where(ok, slots, num_clients)
        pos = state.count[slots] % h
        hist_x = state.hist_x.at[target, pos].set(trained[slots], mode="drop")
        hist_u = state.hist_u.at[target, pos].set(u[slots], mode="drop")
        count = state.count.at[target].add(1, mode="drop")
        return CurveState(trained, hist_x, hist_u, count, u)

    return StepAllocator(init, steps, update)


def make(cfg, local_steps: int, num_slots: int, num_clients: int) -> StepAllocator:
    """The step allocator named by ``cfg.name`` (an ``AllocationConfig``)."""
    if cfg.name == "none":
        return fixed_steps(local_steps)
    return learning_curves(cfg, local_steps, num_slots, num_clients, max_steps(cfg, local_steps))


def max_steps(cfg, local_steps: int) -> int:
    """The engine's scan length: ``local.steps``, or ``allocation.max_steps`` when allocating."""
    if cfg.name == "none":
        return local_steps
    return cfg.max_steps or 3 * local_steps
