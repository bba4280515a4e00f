"""KKT diagnostics shared by every solver path: the relative residual and the implied multiplier."""

from __future__ import annotations

import jax.numpy as jnp


def _kkt_residual(x, g, lam, lower, upper, budget, mask):
    """Relative KKT residual of one resource.

    Stationarity ``g_i = lam`` for interior agents, ``g_i <= lam`` at the lower
    bound, ``g_i >= lam`` at the upper bound, scaled by ``lam`` (or the largest
    marginal when the budget is slack); plus primal feasibility and
    complementary slackness relative to the budget.
    """
    at_lo, at_hi = x <= lower, x >= upper
    r = g - lam
    r = jnp.where(at_lo, jnp.maximum(r, 0.0), r)
    r = jnp.where(at_hi, jnp.minimum(r, 0.0), r)
    r = jnp.where((at_lo & at_hi) | ~mask, 0.0, r)
    ref = jnp.where(lam > 0, lam, jnp.max(jnp.where(mask, jnp.abs(g), 0.0)))
    tiny = jnp.finfo(x.dtype).tiny
    stationarity = jnp.max(jnp.abs(r)) / jnp.maximum(ref, tiny)
    scale = jnp.maximum(budget, tiny)
    spent = jnp.sum(jnp.where(mask, x, 0.0))
    primal = jnp.maximum(spent - budget, 0.0) / scale
    bounds = jnp.max(jnp.where(mask, jnp.maximum(lower - x, x - upper), 0.0)) / scale
    slack = jnp.where(lam > 0, jnp.abs(budget - spent) / scale, 0.0)
    return jnp.maximum(jnp.maximum(stationarity, primal), jnp.maximum(jnp.maximum(bounds, 0.0), slack))


def _multiplier_estimate(x, g, lower, upper, budget, mask):
    """Budget multiplier implied by an allocation: the mean marginal of free agents."""
    free = mask & (x > lower) & (x < upper)
    n_free = jnp.sum(free)
    mean_free = jnp.sum(jnp.where(free, g, 0.0)) / jnp.maximum(n_free, 1)
    # With no free agent any lam between the largest marginal at the lower bound
    # and the smallest at the upper bound is valid; take the former.
    at_lo = jnp.max(jnp.where(mask & (x <= lower), g, 0.0))
    lam = jnp.where(n_free > 0, mean_free, at_lo)
    tight = jnp.sum(jnp.where(mask, x, 0.0)) >= budget * (1 - 1e3 * jnp.finfo(x.dtype).eps)
    return jnp.where(tight, lam, 0.0)



def _budget_capped_multiplier(lam, x, g, upper, upper_user, mask):
    """The budget's multiplier when one agent holds all that the others' lower bounds leave.

    The solvers cap every agent at ``budget - sum(others' lower)`` to keep bounds
    finite. An agent sitting at that cap, below its own upper bound, is interior
    for the real problem, so the multiplier is its marginal (what
    d objective / d budget is); a bracket's value would be any number between the
    others' marginals and it.

    Args:
        lam: f[] the solver's multiplier.
        x, g: f[n] allocation and marginal welfare ``d w U(u) / dx``.
        upper: f[n] the prepared (capped) upper bounds; ``upper_user`` the caller's.
        mask: bool[n] valid agents.

    Returns:
        f[] the multiplier.
    """
    capped = mask & (x >= upper) & (upper < upper_user)
    # Two or more at the cap means the lower bounds alone spend the budget: there
    # the multiplier is not unique, and the solver's value stands.
    return jnp.where(jnp.sum(capped) == 1, jnp.max(jnp.where(capped, g, -jnp.inf)), lam)
