"""Learning-curve fitting: ``acc = scale * (x + e_init) ** gamma`` per agent by Levenberg-Marquardt."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fsjax.allocation.jaxopt_solvers import levenberg_marquardt
from fsjax.allocation.utilities import Array, PowerLaw
from fsjax.allocation.validation import _check_range


class PowerLawFit(NamedTuple):
    """Least-squares fit of ``acc = scale * (x + e_init) ** gamma`` per agent."""

    scale: Array  # f[...]
    gamma: Array  # f[...]
    e_init: Array  # f[...]
    loss: Array  # f[...]  0.5 * sum of squared residuals
    converged: Array  # bool[...]  LM gradient test met within maxiter
    iterations: Array  # i32[...]

    def utility(self) -> PowerLaw:
        """The fitted curves as a ``PowerLaw``."""
        return PowerLaw(self.gamma, self.e_init, self.scale)


def _fit_residual(p, x, acc):
    # scale = exp(p0) and e = exp(p2) keep the curve defined during the search;
    # an interior optimum is the same as the unconstrained least-squares one.
    return jnp.exp(p[0]) * (x + jnp.exp(p[2])) ** p[1] - acc


def _fit_init(x, acc):
    """Start from log-log regression over a grid of e_init; the best grid point wins."""
    span = jnp.maximum(jnp.max(x), jnp.finfo(x.dtype).tiny)
    grid = span * jnp.logspace(-4, 0.5, 24, dtype=x.dtype)
    la = jnp.log(jnp.maximum(acc, jnp.finfo(x.dtype).tiny))

    def one(e):
        lx = jnp.log(x + e)
        dx = lx - lx.mean()
        g = jnp.sum(dx * (la - la.mean())) / jnp.maximum(jnp.sum(dx * dx), jnp.finfo(x.dtype).tiny)
        ls = la.mean() - g * lx.mean()
        return jnp.sum((la - ls - g * lx) ** 2), jnp.array([ls, g, jnp.log(e)])

    sse, params = jax.vmap(one)(grid)
    return params[jnp.argmin(sse)]


def _fit_one(x, acc, maxiter, tol):
    p, error, iterations = levenberg_marquardt(_fit_residual, _fit_init(x, acc), x, acc, maxiter=maxiter, tol=tol)
    return PowerLawFit(jnp.exp(p[0]), p[1], jnp.exp(p[2]), 0.5 * jnp.sum(_fit_residual(p, x, acc) ** 2),
                       error <= tol, iterations)


@functools.partial(jax.jit, static_argnames=("maxiter", "tol"))
def _fit_jit(resources, accuracies, maxiter, tol):
    fit = functools.partial(_fit_one, maxiter=maxiter, tol=tol)
    for _ in range(resources.ndim - 1):
        fit = jax.vmap(fit)
    return fit(resources, accuracies)


def fit_power_law(resources, accuracies, *, maxiter=200, tol=None) -> PowerLawFit:
    """Fit ``(scale, gamma, e_init)`` to measured learning curves (Levenberg-Marquardt).

    Args:
        resources: f[..., m] resource levels (e.g. training samples or steps), >= 0.
        accuracies: f[..., m] measured accuracies, > 0; leading axes are agents
            (fitted independently with ``jax.vmap``).
        maxiter: LM iterations.
        tol: gradient-norm tolerance; default 1e-10 (float64) / 1e-5 (float32).

    Returns:
        ``PowerLawFit`` with leaves of shape ``[...]``.

    Example:
        >>> x = jnp.linspace(0.1, 2.0, 12)
        >>> fit = fit_power_law(x, 0.8 * (x + 0.05) ** 0.3)
        >>> round(float(fit.gamma), 3)
        0.3
    """
    x, acc = jnp.asarray(resources), jnp.asarray(accuracies)
    x, acc = jnp.asarray(x, jnp.result_type(x, acc, float)), jnp.asarray(acc, jnp.result_type(x, acc, float))
    if x.shape != acc.shape:
        raise ValueError(f"accuracies has shape {acc.shape}; expected the shape of resources {x.shape}")
    if x.ndim == 0 or x.shape[-1] < 3:
        raise ValueError(f"resources has shape {x.shape}; expected at least 3 points on the last axis")
    _check_range("resources", x, lo=0.0, expect="finite and >= 0")
    _check_range("accuracies", acc, lo=0.0, lo_open=True, expect="finite and > 0")
    tol = (1e-10 if x.dtype == jnp.float64 else 1e-5) if tol is None else tol
    return _fit_jit(x, acc, maxiter, tol)
