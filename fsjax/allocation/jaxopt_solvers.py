"""Every jaxopt call in fsjax, and nothing else.

jaxopt is archived upstream (0.8.5 is its last release; pinned exactly in
pyproject.toml). Keeping each of its four uses here, behind a small function,
means replacing it later (``jax.lax.custom_root``, optimistix, ...) touches
this one file; ``tests/test_allocation.py`` pins the numbers they produce.

* :func:`bisect` -- ``jaxopt.Bisection`` with implicit differentiation
  (water filling and the power-law dual).
* :func:`projected_gradient` -- ``jaxopt.ProjectedGradient`` (generic concave path).
* :func:`fixed_point` -- ``jaxopt.implicit_diff.custom_fixed_point`` (the
  two-resource block-coordinate loop).
* :func:`levenberg_marquardt` -- ``jaxopt.LevenbergMarquardt`` (learning-curve fits).
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

with warnings.catch_warnings():
    # jaxopt announces on import that it is unmaintained. fsjax keeps it on
    # purpose (pinned, confined to this module), so silence that notice once,
    # here, instead of in every fsjax user's output.
    warnings.filterwarnings("ignore", message="JAXopt is no longer maintained", category=DeprecationWarning)
    import jaxopt

# The implicit-differentiation linear solve of the iterative paths.
_GMRES = functools.partial(jaxopt.linear_solve.solve_gmres, tol=1e-12)


def bisect_iters(dtype):
    """Fixed bisection count for ``dtype``: 72 steps (float64) or 40 (float32).

    Example:
        >>> bisect_iters(jnp.float32)
        40
    """
    # 2**-72 (2**-40) of any bracket up to ~1e6 wide is below the float64 (float32)
    # spacing of its endpoints; a fixed count also keeps vmapped solves in lockstep.
    return 72 if jnp.dtype(dtype) == jnp.float64 else 40


def bisect(fun, lo, hi, args, solve=None):
    """Root of a monotone ``fun(t, *args)`` on ``[lo, hi]`` with ``jaxopt.Bisection``.

    The bracket enters through ``args`` as a unit-interval rescaling, never as a
    closure: jaxopt wraps ``run`` in a custom VJP, and closed-over tracers leak
    out of it under ``jit`` + ``grad``.

    Args:
        fun: ``fun(t, *args) -> f[]``, monotone in ``t``.
        lo, hi: f[] bracket (no gradient flows through it).
        args: tuple of arrays passed to ``fun``; the root is differentiable in them.
        solve: optional linear solve for the implicit derivative (jaxopt's default if None).

    Returns:
        ``(t, t_low, t_high, iterations)``: the implicit-diff root and the final bracket.

    Example:
        >>> t, _, _, _ = bisect(lambda t, c: t - c, jnp.array(0.0), jnp.array(1.0), (jnp.array(0.25),))
        >>> round(float(t), 6)
        0.25
    """
    lo, hi = jax.lax.stop_gradient(lo), jax.lax.stop_gradient(hi)

    def unit(s, lo, hi, *args):
        return fun(lo + s * (hi - lo), *args)

    bis = jaxopt.Bisection(optimality_fun=unit, lower=0.0, upper=1.0, maxiter=bisect_iters(lo.dtype),
                           tol=0.0, check_bracket=False, implicit_diff_solve=solve)
    s, state = bis.run(None, lo, hi, *args)
    return lo + s * (hi - lo), lo + state.low * (hi - lo), lo + state.high * (hi - lo), state.iter_num


def projected_gradient(fun, projection, x0, hyperparams, *args, maxiter, tol):
    """Minimise ``fun(x, *args)`` over a set by ``jaxopt.ProjectedGradient``.

    Args:
        fun: ``fun(x, *args) -> f[]`` to minimise.
        projection: ``projection(y, hyperparams) -> x``, the Euclidean projection.
        x0: f[n] feasible start.
        hyperparams: the projection's parameters (differentiable).
        *args: extra arguments of ``fun`` (differentiable).
        maxiter: step budget.
        tol: jaxopt's step-size stopping test.

    Returns:
        ``(x f[n], iterations i32[])``.
    """
    pg = jaxopt.ProjectedGradient(
        fun=fun,
        projection=projection,
        maxiter=maxiter,
        # Marginals near a zero initial resource are steep (alpha > 0): the line
        # search must be able to shrink the step by many decades.
        maxls=60,
        acceleration=False,
        tol=tol,
        implicit_diff_solve=_GMRES,
    )
    x, state = pg.run(x0, hyperparams, *args)
    return x, state.iter_num


def fixed_point(fixed_point_fun):
    """Decorator: differentiate a solver through the fixed point of ``fixed_point_fun``.

    ``jaxopt.implicit_diff.custom_fixed_point`` with ``has_aux=True`` (the solver
    returns ``(x, aux)``) and GMRES for the linear system.

    Args:
        fixed_point_fun: ``T(x, *theta) -> x`` whose fixed point the solver returns.

    Returns:
        A decorator for ``solver(x0, *theta) -> (x, aux)``.
    """
    return jaxopt.implicit_diff.custom_fixed_point(fixed_point_fun, has_aux=True, solve=_GMRES)


def levenberg_marquardt(residual_fun, init, *args, maxiter, tol):
    """Least squares ``min 0.5 * ||residual_fun(p, *args)||^2`` by ``jaxopt.LevenbergMarquardt``.

    Args:
        residual_fun: ``(p f[k], *args) -> f[m]``.
        init: f[k] starting parameters.
        *args: data passed to ``residual_fun``.
        maxiter: iterations.
        tol: gradient-norm tolerance (jaxopt's ``tol``; ``xtol`` and ``gtol`` are off).

    Returns:
        ``(p f[k], error f[], iterations i32[])``.
    """
    lm = jaxopt.LevenbergMarquardt(residual_fun=residual_fun, maxiter=maxiter, tol=tol, xtol=0.0, gtol=0.0,
                                   solver="cholesky", materialize_jac=True)
    p, state = lm.run(init, *args)
    return p, state.error, state.iter_num
