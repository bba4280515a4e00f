"""Two resources (Cobb-Douglas): block coordinate ascent with exact dual blocks.

Each block solves one resource exactly (a power-law dual solve) with the other
held fixed. ``"joint"`` sweeps to a KKT point (differentiable through the fixed
point); the study's pass is one sweep, from zero extra compute (``"study"``,
as the study's code does) or from an even split (``"study_even"``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from fsjax.allocation.dual import _solve_dual
from fsjax.allocation.jaxopt_solvers import fixed_point
from fsjax.allocation.kkt import _kkt_residual, _multiplier_estimate
from fsjax.allocation.utilities import PowerLaw, _phi_marginal
from fsjax.allocation.waterfill import waterfill


def _cd_block(r, x, cd, budget, alpha, lower, upper, weights, mask):
    """Exact solve of resource ``r`` (traced 0 or 1) with the other held at ``x``."""
    g, e = jnp.stack([cd.g1, cd.g2], -1), jnp.stack([cd.init1, cd.init2], -1)
    other = (x[:, 1 - r] + e[:, 1 - r]) ** g[:, 1 - r]
    xr, _, _ = _solve_dual(PowerLaw(g[:, r], e[:, r], cd.scale * other), budget[r], alpha,
                           lower[:, r], upper[:, r], weights, mask)
    return x.at[:, r].set(xr)


def _cd_sweep(x, cd, budget, alpha, lower, upper, weights, mask):
    """One pass of the study's scheme: resource 1 with 2 fixed, then 2 with 1 fixed."""
    # A loop over r (not two inlined blocks) traces one dual solve: half the compile.
    return jax.lax.fori_loop(0, 2, functools.partial(_cd_block, cd=cd, budget=budget, alpha=alpha, lower=lower,
                                                     upper=upper, weights=weights, mask=mask), x)


def _cd_residual(x, cd, budget, alpha, lower, upper, weights, mask):
    """Joint KKT residual (max over resources) and the implied multipliers f[2]."""
    g = _phi_marginal(cd.value(x), cd.marginal(x), weights, alpha, mask)

    def one(x, g, lo, up, b):  # one resource's columns
        lam = _multiplier_estimate(x, g, lo, up, b, mask)
        return _kkt_residual(x, g, lam, lo, up, b, mask), lam

    res, lams = jax.vmap(one, in_axes=(1, 1, 1, 1, 0))(x, g, lower, upper, budget)
    return jnp.max(res), lams


def _cd_even_split(lower, upper, budget):
    return jax.vmap(waterfill, in_axes=(1, 1, 1, 0), out_axes=1)(jnp.zeros_like(lower), lower, upper, budget)


def _cd_joint(x0, theta, tol, maxiter):
    """Sweep from ``x0`` to a KKT point; returns (x_joint, (x_after_first_sweep, sweeps))."""

    @fixed_point(_cd_sweep)
    def joint(x0, *theta):
        def cond(c):
            # Sweep past the reporting tolerance: BCD converges linearly, and the
            # extra sweeps are cheap next to a second solve.
            return (c[2] < maxiter) & (c[3] > 1e-2 * tol)

        def body(c):
            x = _cd_sweep(c[0], *theta)
            return x, jnp.where(c[2] == 0, x, c[1]), c[2] + 1, _cd_residual(x, *theta)[0]

        inf = jnp.asarray(jnp.inf, x0.dtype)
        x, first, sweeps, _ = jax.lax.while_loop(cond, body, (x0, x0, jnp.zeros((), jnp.int32), inf))
        return x, (first, sweeps)

    return joint(x0, *theta)


def _cd_zero_extra(lower):
    """The study's start: nothing beyond the lower bounds (zero extra compute by default)."""
    return lower


def _solve_cobb_douglas(cd, budget, alpha, lower, upper, weights, mask, init, tol, maxiter, method):
    """Returns (x_pass, x_joint, sweeps) for prepared Cobb-Douglas inputs.

    ``x_pass`` is one block-coordinate pass: from zero extra compute (the study's
    start) for ``"joint"`` and ``"study"``, from the even split for
    ``"study_even"``; ``init`` replaces either start. The joint loop always starts
    from the even split (or ``init``).
    """
    theta = (cd, budget, alpha, lower, upper, weights, mask)
    x_even = _cd_even_split(lower, upper, budget) if init is None else init
    x_joint, (x_first, sweeps) = _cd_joint(jax.lax.stop_gradient(x_even), theta, tol, maxiter)
    if method == "study_even":
        # The joint loop's first sweep carries no gradient; retrace it to get one.
        x_pass = _cd_sweep(x_even, *theta)
    else:
        # Only the compute column of the start matters: block 1 (data) overwrites the rest.
        x_pass = _cd_sweep(_cd_zero_extra(lower) if init is None else init, *theta)
    return x_pass, x_joint, sweeps
