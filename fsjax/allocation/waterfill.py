"""Water filling and the Euclidean projection onto a box with a budget.

* :func:`waterfill` -- ``x = clip(y - nu, lower, upper)`` with ``sum(x) == total``
  (the equalising and uniform splits, and the projection below).
* :func:`project_box_budget` -- projection onto ``{lower <= x <= upper, sum(x) <= budget}``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fsjax.allocation.jaxopt_solvers import bisect


def waterfill(y, lower, upper, total, mask=None):
    """Water filling: ``x = clip(y - nu, lower, upper)`` with ``sum(x) == total``.

    A bisection (``jaxopt_solvers.bisect``) brackets ``nu``; one exact step on the free set then
    hits the total to rounding and makes ``x`` differentiable (a.e.) in all inputs.

    Args:
        y: f[n] levels (``-e_init`` gives the equalising split).
        lower: f[n] lower bounds.
        upper: f[n] finite upper bounds.
        total: f[] amount to distribute; clipped into ``[sum lower, sum upper]``.
        mask: optional bool[n]; masked agents get 0.

    Returns:
        f[n] the water-filled allocation.

    Example:
        >>> waterfill(-jnp.array([0.0, 1.0]), jnp.zeros(2), jnp.full(2, 9.0), 3.0)
        Array([2., 1.], dtype=float32)
    """
    y, lower, upper = jnp.broadcast_arrays(*(jnp.asarray(a, jnp.result_type(y, float)) for a in (y, lower, upper)))
    if mask is not None:
        lower, upper, y = jnp.where(mask, lower, 0.0), jnp.where(mask, upper, 0.0), jnp.where(mask, y, 0.0)
    total = jnp.clip(total, jnp.sum(lower), jnp.sum(upper))
    sg = jax.lax.stop_gradient
    ys, ls, us, ts = sg(y), sg(lower), sg(upper), sg(total)

    def excess(nu, ys, ls, us, ts):
        return jnp.sum(jnp.clip(ys - nu, ls, us)) - ts

    nu, _, _, _ = bisect(excess, jnp.min(ys - us) - 1.0, jnp.max(ys - ls) + 1.0, (ys, ls, us, ts))
    nu = sg(nu)
    z = y - nu
    free = sg((z > lower) & (z < upper))
    fixed = jnp.where(z >= upper, upper, lower)
    n_free = jnp.sum(free)
    held = jnp.sum(jnp.where(free, y, 0.0)) + jnp.sum(jnp.where(free, 0.0, fixed))
    nu_exact = (held - total) / jnp.maximum(n_free, 1)
    x = jnp.clip(y - jnp.where(n_free > 0, nu_exact, nu), lower, upper)
    # At either end of [sum lower, sum upper] the excess is 0 on a whole half-line,
    # which leaves bisection no sign change: those ends are the bounds themselves.
    return jnp.where(total >= jnp.sum(upper), upper, jnp.where(total <= jnp.sum(lower), lower, x))


def project_box_budget(y, hyperparams):
    """Euclidean projection onto ``{lower <= x <= upper, sum(x) <= budget}``.

    Args:
        y: f[n] point to project.
        hyperparams: ``(lower f[n], upper f[n] finite, budget f[])``.

    Returns:
        f[n] the projection (jaxopt ``projection(x, hyperparams)`` signature).

    Example:
        >>> project_box_budget(jnp.array([1.0, 0.5]), (jnp.zeros(2), jnp.ones(2), 1.0))
        Array([0.75, 0.25], dtype=float32)
    """
    lower, upper, budget = hyperparams
    box = jnp.clip(y, lower, upper)
    return jnp.where(jnp.sum(box) <= budget, box, waterfill(y, lower, upper, budget))

