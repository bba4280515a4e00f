"""Utilities (per-agent accuracy curves), the result type and alpha-fair welfare.

* :class:`PowerLaw` -- one resource, ``u = scale * (x + e_init) ** gamma``.
* :class:`CobbDouglas` -- two resources (data, compute), allocations ``[n, 2]``.
* :class:`Concave` -- any concave differentiable per-agent curve (autodiff marginals).
* :class:`Allocation` -- what every allocator returns.
* :func:`alpha_fair` -- the alpha-fair utility ``U_alpha`` and the welfare helpers.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class PowerLaw(NamedTuple):
    """Power-law learning curve ``u_i(x) = scale_i * (x + e_init_i) ** gamma_i``.

    Leaves broadcast against each other to the agent axis ``[n]``.

    Example:
        >>> u = PowerLaw(gamma=jnp.array([0.25, 0.5]), e_init=jnp.array([0.01, 0.1]))
        >>> u.value(jnp.array([0.3, 0.3])).shape
        (2,)
    """

    gamma: Any  # f[n]  exponent in (0, 1]
    e_init: Any  # f[n]  resource the agent already holds, >= 0
    scale: Any = 1.0  # f[n] or f[]  accuracy at one unit of resource, > 0

    def value(self, x):
        """Utility ``u_i(x_i)`` for allocation ``x: f[n]``; returns ``f[n]``."""
        return self.scale * (x + self.e_init) ** self.gamma

    def marginal(self, x):
        """Price ``du_i/dx_i`` at ``x: f[n]``; returns ``f[n]``."""
        return self.scale * self.gamma * (x + self.e_init) ** (self.gamma - 1.0)


class CobbDouglas(NamedTuple):
    """Two-resource utility ``u_i = scale * (x1 + init1) ** g1 * (x2 + init2) ** g2``.

    Resource 1 is the study's data share ``rho``, resource 2 its compute share.
    Allocations have shape ``[n, 2]``; budgets shape ``[2]``.

    Example:
        >>> u = CobbDouglas(g1=jnp.array([0.3, 0.6]), g2=jnp.array([0.5, 0.2]),
        ...                 init1=jnp.array([0.1, 0.2]), init2=jnp.array([0.05, 0.3]))
        >>> u.value(jnp.ones((2, 2))).shape
        (2,)
    """

    g1: Any  # f[n]  exponent of resource 1, in [0, 1]
    g2: Any  # f[n]  exponent of resource 2, in [0, 1]
    init1: Any  # f[n]  resource 1 already held, >= 0
    init2: Any  # f[n]  resource 2 already held, >= 0
    scale: Any = 1.0  # f[n] or f[]  > 0

    def value(self, x):
        """Utility for ``x: f[n, 2]``; returns ``f[n]``."""
        return self.scale * (x[:, 0] + self.init1) ** self.g1 * (x[:, 1] + self.init2) ** self.g2

    def marginal(self, x):
        """Partial derivatives ``du_i/dx_ir``; returns ``f[n, 2]``."""
        z1, z2 = x[:, 0] + self.init1, x[:, 1] + self.init2
        # Written out rather than u * g / z, which is 0/0 where z = 0.
        return jnp.stack([self.scale * self.g1 * z1 ** (self.g1 - 1.0) * z2 ** self.g2,
                          self.scale * self.g2 * z1 ** self.g1 * z2 ** (self.g2 - 1.0)], -1)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["params"], meta_fields=["fn"])
@dataclasses.dataclass(frozen=True)
class Concave:
    """Any concave, increasing, differentiable per-agent utility.

    ``fn(x_i, params_i) -> u_i`` is written for ONE agent (scalar in, scalar out);
    ``params`` is a pytree whose leaves have the agent axis first. Solved by the
    generic projected path.

    Example:
        >>> u = Concave(lambda x, p: jnp.log1p(p["a"] * x), {"a": jnp.array([1.0, 2.0])})
        >>> u.value(jnp.array([1.0, 1.0])).shape
        (2,)
    """

    fn: Callable  # (f[], params_i) -> f[]
    params: Any  # pytree, leaves [n, ...]

    def value(self, x):
        """Utility for ``x: f[n]``; returns ``f[n]``."""
        return jax.vmap(self.fn)(x, self.params)

    def marginal(self, x):
        """``du_i/dx_i`` by autodiff; returns ``f[n]``."""
        return jax.vmap(jax.grad(self.fn))(x, self.params)


class Allocation(NamedTuple):
    """Result of an allocator; every field is an array, so results vmap and stack.

    The first five fields are the public contract; the rest are diagnostics.
    """

    allocation: Array  # f[n] or f[n, 2]  resource given to each agent (0 if masked)
    utilities: Array  # f[n]  u_i(x_i), 0 for masked agents
    prices: Array  # f[n] or f[n, 2]  du_i/dx_i at the allocation
    objective: Array  # f[]  sum_i w_i U_alpha(u_i)
    converged: Array  # bool[]  KKT residual <= tol and outputs finite (baselines: finite)
    multiplier: Array  # f[] or f[2]  budget multiplier lam (NaN for baselines)
    residual: Array  # f[]  relative KKT residual (NaN for baselines)
    iterations: Array  # i32[]  bisection steps, projected-gradient steps or BCD sweeps
    gap: Array  # f[]  two resources: objective(joint) - objective(single pass, see solve); else NaN



def alpha_fair(u, alpha):
    """The alpha-fair utility ``U_alpha(u)``, elementwise.

    Args:
        u: f[...] positive utilities.
        alpha: f[] fairness parameter >= 0 (may be traced; 1 means ``log``).

    Returns:
        f[...] ``u`` (alpha 0), ``log u`` (alpha 1) or ``u**(1-alpha)/(1-alpha)``.

    Example:
        >>> float(alpha_fair(jnp.e, 1.0))
        1.0
    """
    alpha = jnp.asarray(alpha, jnp.result_type(u, float))
    is_log, is_lin = alpha == 1.0, alpha == 0.0
    # Each branch sees a harmless input where it is not selected; otherwise its
    # inf/NaN derivatives (log or u**1 at u = 0) leak into gradients through where.
    a = jnp.where(is_log | is_lin, 0.5, alpha)
    power = jnp.where(is_log | is_lin, 1.0, u) ** (1.0 - a) / (1.0 - a)
    return jnp.where(is_lin, u, jnp.where(is_log, jnp.log(jnp.where(is_log, u, 1.0)), power))


def _objective(u, weights, alpha, mask):
    return jnp.sum(jnp.where(mask, weights * alpha_fair(jnp.where(mask, u, 1.0), alpha), 0.0))


def _phi_marginal(u, du, weights, alpha, mask):
    """d/dx of w * U_alpha(u(x)) = w * u**-alpha * du; the quantity KKT compares to lam."""
    u = jnp.where(mask, u, 1.0)
    if du.ndim == u.ndim + 1:
        u, weights, mask = u[:, None], weights[:, None], mask[:, None]
    return jnp.where(mask, weights * u ** (-alpha) * du, 0.0)

