"""Baselines with the FairSynergy allocator's signature and result type, and ``REGISTRY``.

* :func:`uniform` -- ``budget / n`` each; :func:`random` -- ``budget * Dirichlet(1)``;
  :func:`equalizing` -- water filling on the initial resources;
  :func:`fairsynergy` -- :func:`fsjax.allocation.solve` with the common signature.

Two-resource baselines evaluate the correct Cobb-Douglas utility (data's
exponent ``g1`` on data); the study's code passes the exponents swapped there
(see experiments/fairsynergy/README.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fsjax.allocation.api import _assemble, _resolve_method, solve
from fsjax.allocation.utilities import Allocation, Concave, PowerLaw  # noqa: F401  (PowerLaw: doctests)
from fsjax.allocation.validation import _canonical, _prepare, _validate
from fsjax.allocation.waterfill import waterfill


def _baseline_impl(utility, budget, alpha, lower, upper, weights, mask, key, *, kind):
    utility, lower, upper, weights = _prepare(utility, budget, lower, upper, weights, mask)

    def levels(r):  # y in x = clip(y - nu, lower, upper); r is the resource (None: one resource)
        if kind == "uniform":
            return jnp.zeros(mask.shape, budget.dtype)
        if kind == "equalizing":
            return -(utility.e_init if r is None else (utility.init1, utility.init2)[r])
        # Dirichlet(1) = normalised exponentials; masked agents simply drop out.
        draw = jax.random.exponential(key if r is None else jax.random.fold_in(key, r), mask.shape, budget.dtype)
        draw = jnp.where(mask, draw, 0.0)
        return (budget if r is None else budget[r]) * draw / jnp.sum(draw)

    if lower.ndim == 2:
        x = jnp.stack([waterfill(levels(r), lower[:, r], upper[:, r], budget[r], mask) for r in (0, 1)], -1)
    else:
        x = waterfill(levels(None), lower, upper, budget, mask)
    nan = jnp.full(budget.shape, jnp.nan, budget.dtype)
    out = _assemble(utility, x, weights, alpha, mask, budget, lower, upper, nan, 0, 0.0, residual=nan.reshape(-1)[0])
    # Nothing iterates here: the split is exactly what it claims whenever it is finite.
    return out._replace(converged=jnp.all(jnp.isfinite(out.allocation)) & jnp.isfinite(out.objective))


_baseline_jit = jax.jit(_baseline_impl, static_argnames=("kind",))


def _baseline(kind, utility, budget, alpha, lower, upper, weights, mask, key):
    _resolve_method(utility, "auto")
    if kind == "equalizing" and isinstance(utility, Concave):
        raise ValueError("utility is Concave; equalizing needs initial resources (PowerLaw or CobbDouglas)")
    _validate(utility, budget, alpha, lower, upper, weights, mask)
    args = _canonical(utility, budget, alpha, lower, upper, weights, mask)[:-1]
    return _baseline_jit(*args, jax.random.key(0) if key is None else key, kind=kind)


def uniform(utility, budget, *, alpha=0.0, lower=0.0, upper=None, weights=None, mask=None, key=None) -> Allocation:
    """Even split ``budget / n`` per resource (water-filled into the bounds if any bind).

    Args:
        utility, budget, alpha, lower, upper, weights, mask: as :func:`solve`.
        key: unused; present for the registry's common signature.

    Returns:
        ``Allocation`` (``multiplier`` and ``residual`` are NaN: nothing is optimised).

    Example:
        >>> uniform(PowerLaw(jnp.array([0.5, 0.5]), jnp.zeros(2)), 1.0).allocation
        Array([0.5, 0.5], dtype=float32)
    """
    return _baseline("uniform", utility, budget, alpha, lower, upper, weights, mask, key)


def random(utility, budget, *, alpha=0.0, lower=0.0, upper=None, weights=None, mask=None, key=None) -> Allocation:
    """Random split ``budget * Dirichlet(1, ..., 1)`` over the valid agents.

    Each resource draws its own sample (``fold_in(key, r)``); bounds, if any
    bind, are restored by water filling.

    Args:
        utility, budget, alpha, lower, upper, weights, mask: as :func:`solve`.
        key: ``jax.random`` key; default ``jax.random.key(0)``, so runs are seeded.

    Returns:
        ``Allocation``.

    Example:
        >>> out = random(PowerLaw(jnp.array([0.5, 0.5]), jnp.zeros(2)), 1.0, key=jax.random.key(1))
        >>> round(float(out.allocation.sum()), 6)
        1.0
    """
    return _baseline("random", utility, budget, alpha, lower, upper, weights, mask, key)


def equalizing(utility, budget, *, alpha=0.0, lower=0.0, upper=None, weights=None, mask=None, key=None) -> Allocation:
    """Equalising split: water filling on the initial resources.

    Brings the poorest agents up to a common level ``L``: ``x_i = max(L - e_i, 0)``
    with ``sum(x) = budget`` (per resource for ``CobbDouglas``).

    Args:
        utility: ``PowerLaw`` or ``CobbDouglas`` (``Concave`` has no initial resources).
        budget, alpha, lower, upper, weights, mask: as :func:`solve`.
        key: unused; present for the registry's common signature.

    Returns:
        ``Allocation``.

    Example:
        >>> equalizing(PowerLaw(jnp.array([0.5, 0.5]), jnp.array([0.0, 1.0])), 3.0).allocation
        Array([2., 1.], dtype=float32)
    """
    return _baseline("equalizing", utility, budget, alpha, lower, upper, weights, mask, key)


def fairsynergy(utility, budget, *, alpha=0.0, lower=0.0, upper=None, weights=None, mask=None, key=None) -> Allocation:
    """The FairSynergy allocator with the registry's common signature.

    Args:
        utility, budget, alpha, lower, upper, weights, mask: as :func:`solve`.
        key: unused (the solve is deterministic); present for the common signature.

    Returns:
        ``Allocation`` from :func:`solve` with ``method="auto"``.

    Example:
        >>> fairsynergy(PowerLaw(jnp.array([0.5, 0.5]), jnp.zeros(2)), 1.0).allocation
        Array([0.5, 0.5], dtype=float32)
    """
    del key
    return solve(utility, budget, alpha=alpha, lower=lower, upper=upper, weights=weights, mask=mask)


# Allocators by config name; all share fairsynergy's signature.
REGISTRY = {"fairsynergy": fairsynergy, "uniform": uniform, "random": random, "equalizing": equalizing}
