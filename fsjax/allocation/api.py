"""The public solve: method dispatch, assembly of the result, batching.

* :func:`solve` -- one instance; validates, canonicalises, runs one jitted solve.
* :func:`solve_batch` -- a leading batch axis, one compiled ``jax.vmap``-ed solve.
* :func:`pad_stack` -- instances with different agent counts as one masked batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fsjax.allocation.cobb_douglas import _cd_residual, _solve_cobb_douglas
from fsjax.allocation.dual import _solve_dual
from fsjax.allocation.kkt import _budget_capped_multiplier, _kkt_residual
from fsjax.allocation.projected import _solve_projected
from fsjax.allocation.utilities import (Allocation, CobbDouglas, Concave, PowerLaw, _objective,
                                        _phi_marginal)
from fsjax.allocation.validation import (_PAD, _canonical, _default_tol, _num_agents, _prepare, _shape,
                                         _validate)


def _assemble(utility, x, weights, alpha, mask, budget, lower, upper, lam, iterations, tol, gap=None, residual=None):
    two = x.ndim == 2
    m2 = mask[:, None] if two else mask
    x = jnp.where(m2, x, 0.0)
    u = jnp.where(mask, utility.value(x), 0.0)
    du = jnp.where(m2, utility.marginal(x), 0.0)
    objective = _objective(u, weights, alpha, mask)
    if residual is None:
        g = _phi_marginal(u, du, weights, alpha, mask)
        residual = _kkt_residual(x, g, lam, lower, upper, budget, mask)
    finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(u)) & jnp.isfinite(objective)
    nan = jnp.full((), jnp.nan, x.dtype)
    return Allocation(
        allocation=x,
        utilities=u,
        prices=du,
        objective=objective,
        converged=finite & (residual <= tol),
        multiplier=lam,
        residual=residual,
        iterations=jnp.asarray(iterations, jnp.int32),
        gap=nan if gap is None else gap,
    )


_METHODS = {PowerLaw: ("dual", "projected"), Concave: ("projected",), CobbDouglas: ("joint", "study", "study_even")}


def _solve_impl(utility, budget, alpha, lower, upper, weights, mask, init, *, method, tol, maxiter):
    upper_user = upper
    utility, lower, upper, weights = _prepare(utility, budget, lower, upper, weights, mask)
    tol = _default_tol(budget.dtype) if tol is None else tol
    common = (weights, alpha, mask, budget, lower, upper)
    if method == "dual":
        x, lam, it = _solve_dual(utility, budget, alpha, lower, upper, weights, mask)
        g = _phi_marginal(utility.value(x), utility.marginal(x), weights, alpha, mask)
        lam = _budget_capped_multiplier(lam, x, g, upper, upper_user, mask)
        return _assemble(utility, x, *common, lam, it, tol)
    if method == "projected":
        # The projected-gradient step test is looser than KKT; converged is KKT.
        x, lam, it = _solve_projected(utility, budget, alpha, lower, upper, weights, mask, init,
                                      tol=tol * 1e-3, maxiter=maxiter or 5000)
        g = _phi_marginal(utility.value(x), utility.marginal(x), weights, alpha, mask)
        lam = _budget_capped_multiplier(lam, x, g, upper, upper_user, mask)
        return _assemble(utility, x, *common, lam, it, tol)
    x_study, x_joint, sweeps = _solve_cobb_douglas(utility, budget, alpha, lower, upper, weights, mask, init,
                                                   tol, maxiter or 1000, method)
    theta = (utility, budget, alpha, lower, upper, weights, mask)
    gap = (_objective(utility.value(x_joint), weights, alpha, mask)
           - _objective(utility.value(x_study), weights, alpha, mask))
    single = method in ("study", "study_even")
    x = x_study if single else x_joint
    res, lams = _cd_residual(x, *theta)
    # The study's pass is judged like any solve: converged only at a KKT point
    # (alpha = 1, where the resources separate); `gap` says how far it fell short.
    return _assemble(utility, x, *common, lams, 1 if single else sweeps, tol, gap=gap, residual=res)


_solve_jit = jax.jit(_solve_impl, static_argnames=("method", "tol", "maxiter"))


def _resolve_method(utility, method):
    if type(utility) not in _METHODS:
        raise ValueError(f"utility must be PowerLaw, CobbDouglas or Concave; got {type(utility).__name__}")
    allowed = _METHODS[type(utility)]
    if method == "auto":
        return allowed[0]
    if method not in allowed:
        raise ValueError(f"method={method!r} is not available for {type(utility).__name__}; expected one of {allowed}")
    return method


def solve(utility, budget, *, alpha=0.0, lower=0.0, upper=None, weights=None, mask=None,
          method="auto", tol=None, maxiter=None, init=None) -> Allocation:
    """FairSynergy: maximise ``sum_i w_i U_alpha(u_i(x_i))`` under a shared budget.

    Concrete inputs are validated first (ValueError naming the field); inside
    ``jit``/``vmap``/``grad`` only shapes are checked. Differentiable with
    ``jax.grad`` (reverse mode, implicit differentiation) in ``budget``, the
    utility's parameters, ``weights`` and the bounds.

    Args:
        utility: ``PowerLaw`` (fast dual path), ``Concave`` (projected path) or
            ``CobbDouglas`` (two resources, allocation ``[n, 2]``).
        budget: f[] total resource (f[2] for ``CobbDouglas``), >= 0.
        alpha: fairness, >= 0 (0 utilitarian, 1 proportional, large -> max-min).
        lower: f[n] (or f[n, 2]) lower bounds >= 0; ``sum(lower) <= budget``.
        upper: f[n] (or f[n, 2]) upper bounds, default none.
        weights: f[n] positive welfare weights, default 1.
        mask: bool[n] valid agents (padding is False and gets 0), default all.
        method: ``"auto"``, ``"dual"`` or ``"projected"`` (one resource), or
            for two resources ``"joint"`` (block coordinate ascent iterated to a
            KKT point, from an even split; the default), ``"study"`` (the study's
            single pass: data with compute held at zero extra, i.e. at ``lower``,
            then compute with that data fixed) or ``"study_even"`` (the same single
            pass started from an even split of compute; fsjax's "study" before
            issue 17).
        tol: KKT tolerance behind ``converged``; default 1e-6 (float64) / 1e-4 (float32).
        maxiter: projected-gradient steps (5000) or BCD sweeps (1000).
        init: optional starting allocation for the iterative paths (and the
            start of the ``"study"``/``"study_even"`` pass).

    Returns:
        ``Allocation``; ``converged`` is False whenever the relative KKT residual
        exceeds ``tol`` or an output is not finite (so a ``"study"`` pass is
        converged only where one pass is optimal; its shortfall is ``gap``).
        Two resources: ``gap`` is objective(joint) - objective(single pass), the
        pass being the one from zero extra compute for ``"joint"`` and
        ``"study"``, the even-split one for ``"study_even"``.

    Example:
        >>> out = solve(PowerLaw(jnp.array([0.25, 0.25]), jnp.array([0.8, 0.007])), 0.7)
        >>> [round(float(v), 4) for v in out.allocation], bool(out.converged)
        ([0.0, 0.7], True)
    """
    method = _resolve_method(utility, method)
    _validate(utility, budget, alpha, lower, upper, weights, mask, init)
    args = _canonical(utility, budget, alpha, lower, upper, weights, mask, init)
    return _solve_jit(*args, method=method, tol=tol, maxiter=maxiter)


@functools.lru_cache(maxsize=None)
def _batched_solver(method, tol, maxiter):
    one = functools.partial(_solve_impl, method=method, tol=tol, maxiter=maxiter)
    return jax.jit(jax.vmap(one, in_axes=(0, 0, None, 0, 0, 0, 0, 0)))


def solve_batch(utility, budget, *, alpha=0.0, lower=0.0, upper=None, weights=None, mask=None,
                method="auto", tol=None, maxiter=None, init=None) -> Allocation:
    """:func:`solve` over a leading batch axis, one compiled ``jax.vmap``-ed solve.

    Instances with different agent counts share the call through ``mask``
    (see :func:`pad_stack`). Validation runs once on the whole batch.

    Args:
        utility: utility whose leaves have shape ``[b, n]``.
        budget: f[b] (f[b, 2] for two resources).
        alpha: shared fairness parameter.
        lower, upper, weights, mask, init: broadcast to ``[b, n]`` (``[b, n, 2]``).
        method, tol, maxiter: as in :func:`solve`.

    Returns:
        ``Allocation`` with a leading batch axis on every field.

    Example:
        >>> u, m = pad_stack([PowerLaw(jnp.array([0.5]), jnp.array([0.1])),
        ...                   PowerLaw(jnp.array([0.5, 0.5]), jnp.array([0.1, 0.2]))])
        >>> solve_batch(u, jnp.array([1.0, 1.0]), mask=m).allocation.shape
        (2, 2)
    """
    method = _resolve_method(utility, method)
    _validate(utility, budget, alpha, lower, upper, weights, mask, init, batch_ndim=1)
    args = _canonical(utility, budget, alpha, lower, upper, weights, mask, init, batch=_shape(budget)[:1])
    return _batched_solver(method, tol, maxiter)(*args)


def pad_stack(utilities, n_max=None):
    """Stack utilities with different agent counts into one padded batch.

    Args:
        utilities: sequence of ``PowerLaw`` (or ``CobbDouglas``) instances.
        n_max: padded agent count, default the largest.

    Returns:
        ``(batched utility with leaves [b, n_max], mask bool[b, n_max])``.

    Example:
        >>> u, m = pad_stack([PowerLaw(jnp.array([0.5]), jnp.array([0.1]))], n_max=3)
        >>> m.tolist()
        [[True, False, False]]
    """
    kind = type(utilities[0])
    sizes = [_num_agents(u) for u in utilities]
    n_max = max(sizes) if n_max is None else n_max
    if n_max < max(sizes):
        raise ValueError(f"n_max={n_max} is below the largest instance ({max(sizes)} agents)")
    fields = {}
    for k in kind._fields:
        rows = []
        for u, n in zip(utilities, sizes):
            v = np.broadcast_to(np.asarray(getattr(u, k), float), (n,))
            rows.append(np.concatenate([v, np.full(n_max - n, _PAD.get(k, 1.0))]))
        fields[k] = jnp.asarray(np.stack(rows))
    mask = jnp.asarray(np.arange(n_max)[None, :] < np.asarray(sizes)[:, None])
    return kind(**fields), mask

