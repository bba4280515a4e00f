"""The fast path for power laws: dual bisection over closed-form best responses.

The problem is separable, so one budget multiplier ``lam`` decouples it: each
agent's best response to ``lam`` has a closed form, and a bisection (in
``t = log lam``, so brackets spanning many decades cost a few steps) finds the
``lam`` that spends the budget.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fsjax.allocation.jaxopt_solvers import bisect


def _power_law_dual_terms(pl, weights, alpha):
    """phi_i'(x) = exp(log_c_i) * (x + e_i) ** -k_i for phi_i = w_i U_alpha(u_i)."""
    log_c = jnp.log(weights) + jnp.log(pl.gamma) + (1.0 - alpha) * jnp.log(pl.scale)
    k = 1.0 - pl.gamma * (1.0 - alpha)
    return log_c, k


def _best_response(t, log_c, k, e, lower, upper):
    """argmax_{lower<=x<=upper} phi_i(x) - exp(t) x, in closed form; f[n]."""
    linear = k <= 0.0  # gamma = 1 at alpha = 0: bang-bang, ties resolved by interpolation
    z = (log_c - t) / jnp.where(linear, 1.0, k)
    # Past log(upper + e) the clip binds anyway; capping keeps exp finite and its
    # gradient free of inf * 0.
    z = jnp.minimum(z, jnp.log(jnp.maximum(upper + e, jnp.finfo(e.dtype).tiny)) + 1.0)
    x = jnp.clip(jnp.exp(z) - e, lower, upper)
    return jnp.where(linear, jnp.where(log_c > t, upper, lower), x)


def _budget_excess(t, log_c, k, e, lower, upper, budget):
    return jnp.sum(_best_response(t, log_c, k, e, lower, upper)) - budget


def _scalar_solve(matvec, b):
    # The implicit-diff system is 1x1; a flat dual (all agents at bounds) has a
    # zero derivative, where the multiplier does not move: return 0, not NaN.
    a = matvec(jnp.ones_like(b))
    ok = jnp.abs(a) > 0
    return jnp.where(ok, b / jnp.where(ok, a, 1.0), 0.0)


def _solve_dual(pl, budget, alpha, lower, upper, weights, mask):
    """Dual bisection for prepared power-law inputs; returns (x, lam, iterations)."""
    log_c, k = _power_law_dual_terms(pl, weights, alpha)
    e = pl.e_init
    # A zero exponent (allowed in CobbDouglas) gives an agent no marginal value;
    # if nobody has any, every feasible point is optimal and lam = 0.
    has_slope = jnp.any(mask & (log_c > -jnp.inf))
    binding = (jnp.sum(upper) > budget) & has_slope
    sg = jax.lax.stop_gradient
    # Bracket in t = log(lam): at t_hi everyone is within lower + slack (spends
    # <= budget), at t_lo everyone is at its upper bound (spends > budget).
    n_valid = jnp.maximum(jnp.sum(mask), 1)
    slack = jnp.maximum(budget - jnp.sum(lower), 0.0) / n_valid
    t_hi = jnp.max(jnp.where(mask, log_c - k * jnp.log(lower + e + slack), -jnp.inf)) + 1.0
    tiny = jnp.finfo(e.dtype).tiny
    t_lo = jnp.min(jnp.where(mask, log_c - k * jnp.log(jnp.maximum(upper + e, tiny)), jnp.inf)) - 1.0
    ok = binding & jnp.isfinite(t_lo) & jnp.isfinite(t_hi)
    t_lo, t_hi = jnp.where(ok, t_lo, -1.0), jnp.where(ok, t_hi, 1.0)
    t, t_a, t_b, iters = bisect(_budget_excess, t_lo, t_hi, (log_c, k, e, lower, upper, budget), _scalar_solve)
    # Interpolate between the bracket's two best responses so the budget is spent
    # exactly (and bang-bang ties are split); the correction carries no gradient.
    x_a = _best_response(t_a, log_c, k, e, lower, upper)  # spends >= budget
    x_b = _best_response(t_b, log_c, k, e, lower, upper)  # spends <= budget
    s_a, s_b = jnp.sum(x_a), jnp.sum(x_b)
    theta = jnp.where(s_a > s_b, (s_a - budget) / jnp.where(s_a > s_b, s_a - s_b, 1.0), 0.0)
    x_fine = x_a + jnp.clip(theta, 0.0, 1.0) * (x_b - x_a)
    x_t = _best_response(t, log_c, k, e, lower, upper)
    x = x_t + sg(x_fine - x_t)
    x = jnp.where(binding, x, jnp.where(has_slope, upper, lower))
    lam = jnp.where(binding, jnp.exp(t), 0.0)
    return x, lam, iters

