"""The generic path: projected gradient ascent for any concave differentiable utility."""

from __future__ import annotations

import jax.numpy as jnp

from fsjax.allocation.jaxopt_solvers import projected_gradient
from fsjax.allocation.kkt import _multiplier_estimate
from fsjax.allocation.utilities import _objective, _phi_marginal
from fsjax.allocation.waterfill import project_box_budget, waterfill


def _neg_welfare(x, utility, weights, alpha, mask):
    return -_objective(utility.value(jnp.where(mask, x, 0.0)), weights, alpha, mask)


def _solve_projected(utility, budget, alpha, lower, upper, weights, mask, init, tol, maxiter):
    """Projected gradient for prepared inputs; returns (x, lam, iterations)."""
    hyper = (lower, upper, budget)
    x0 = waterfill(jnp.zeros_like(lower), lower, upper, budget) if init is None else project_box_budget(init, hyper)
    x, iterations = projected_gradient(_neg_welfare, project_box_budget, x0, hyper, utility, weights, alpha, mask,
                                       maxiter=maxiter, tol=tol)
    g = _phi_marginal(utility.value(x), utility.marginal(x), weights, alpha, mask)
    lam = _multiplier_estimate(x, g, lower, upper, budget, mask)
    return x, lam, iterations
