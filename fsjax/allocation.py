"""FairSynergy: alpha-fair allocation of a shared budget (network utility maximisation).

Agents ``i = 1..n`` share a budget ``B``. Agent ``i`` turns ``x_i`` units of
resource into accuracy ``u_i(x_i)`` (concave, increasing). :func:`solve` returns

    maximise   sum_i w_i * U_alpha(u_i(x_i))
    subject to sum_i x_i <= B,  lower_i <= x_i <= upper_i

with the alpha-fair utility ``U_0(u) = u`` (utilitarian, the study's choice),
``U_1(u) = log u`` (proportional fairness), ``U_a(u) = u**(1-a) / (1-a)``
otherwise (large ``a`` approaches max-min fairness).

Solvers (all jaxopt, all differentiable by implicit differentiation):

* ``"dual"`` -- power-law utilities. The problem is separable, so one budget
  multiplier ``lam`` decouples it: each agent's best response to ``lam`` has a
  closed form, and :class:`jaxopt.Bisection` finds the ``lam`` that spends the
  budget (in log space, so brackets spanning many decades cost a few steps).
* ``"projected"`` -- any concave differentiable utility (:class:`Concave`):
  :class:`jaxopt.ProjectedGradient` with the exact box-and-budget projection.
* ``"joint"`` / ``"study"`` -- two resources (:class:`CobbDouglas`): block
  coordinate ascent, each block an exact ``"dual"`` solve, iterated to a KKT
  point (``"joint"``) or one pass as in the study (``"study"``); both report the
  objective gap between the two.

Every solve reports a relative KKT residual and an honest ``converged`` flag.
Batches of instances with different agent counts share one compiled solve
through a validity ``mask`` (:func:`pad_stack`, :func:`solve_batch`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional

import warnings

import jax
import jax.numpy as jnp
import numpy as np

with warnings.catch_warnings():
    # jaxopt announces on import that it is unmaintained; DESIGN.md chooses it on
    # purpose, so keep that notice out of every fsjax user's output.
    warnings.filterwarnings("ignore", message="JAXopt is no longer maintained", category=DeprecationWarning)
    import jaxopt

Array = jax.Array


# --------------------------------------------------------------------------
# Utilities (per-agent accuracy curves) as small pytrees.


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
    gap: Array  # f[]  two resources: objective(joint) - objective(study pass); else NaN


# --------------------------------------------------------------------------
# alpha-fair welfare.


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


# --------------------------------------------------------------------------
# Validation at the boundary: shapes always, values only for concrete inputs.


def _concrete(x):
    """``np.ndarray`` for a concrete value, ``None`` inside jit/vmap/grad tracing."""
    if x is None:
        return None
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _shape(x):
    return np.shape(x) if not hasattr(x, "shape") else tuple(x.shape)


def _fields(utility):
    if isinstance(utility, Concave):
        return {}
    return utility._asdict()


def _num_agents(utility, batch_ndim=0):
    """Agent count from the leaves' shapes; ValueError naming the mismatched field."""
    if isinstance(utility, Concave):
        leaves = jax.tree_util.tree_leaves(utility.params)
        if not leaves:
            raise ValueError("Concave.params has no array leaves; expected leaves with the agent axis first")
        ns = {_shape(leaf)[batch_ndim] if len(_shape(leaf)) > batch_ndim else None for leaf in leaves}
        if len(ns) != 1 or None in ns:
            raise ValueError(f"Concave.params leaves disagree on the agent axis: {ns}")
        return ns.pop()
    shapes = {k: _shape(v) for k, v in _fields(utility).items()}
    full = {k: s for k, s in shapes.items() if len(s) > batch_ndim}
    if not full:
        raise ValueError(f"{type(utility).__name__} needs at least one field with an agent axis; got shapes {shapes}")
    for k, s in shapes.items():
        if len(s) > batch_ndim + 1:
            raise ValueError(
                f"{type(utility).__name__}.{k} has shape {s}; expected one agent axis"
                + (" after the batch axis" if batch_ndim else " (use jax.vmap or solve_batch for batches)")
            )
    n = {s[-1] for s in full.values()}
    if len(n) != 1:
        raise ValueError(f"{type(utility).__name__} fields have mismatched shapes {shapes}; expected one agent count")
    return n.pop()


def _check_range(name, value, lo=None, hi=None, lo_open=False, finite=True, expect=""):
    v = _concrete(value)
    if v is None:
        return
    v = v.astype(float)
    bad = np.isnan(v)
    if finite:
        bad |= ~np.isfinite(v)
    if lo is not None:
        bad |= (v <= lo) if lo_open else (v < lo)
    if hi is not None:
        bad |= v > hi
    if bad.any():
        first = v[bad].flat[0] if v.ndim else float(v)
        raise ValueError(f"{name} must be {expect}; got {first!r}" + (f" (shape {v.shape})" if v.ndim else ""))


def _check_broadcast(name, value, shape):
    if value is None:
        return
    s = _shape(value)
    try:
        if np.broadcast_shapes(s, shape) != tuple(shape):
            raise ValueError
    except ValueError:
        raise ValueError(f"{name} has shape {s}; expected a shape that broadcasts to {tuple(shape)}") from None


def _validate(utility, budget, alpha, lower, upper, weights, mask, init=None, batch_ndim=0):
    """Raise ValueError naming the field for bad input, before any solve."""
    n = _num_agents(utility, batch_ndim)
    if n < 1:
        raise ValueError(f"utility has {n} agents; expected at least one")
    two = isinstance(utility, CobbDouglas)
    if len(_shape(budget)) < batch_ndim:
        raise ValueError(f"budget has shape {_shape(budget)}; expected one budget per instance of the batch")
    batch = _shape(budget)[:batch_ndim]
    per = (n, 2) if two else (n,)
    bshape = tuple(batch) + ((2,) if two else ())
    if _shape(budget) != bshape:
        per_resource = " (one per resource)" if two else ""
        raise ValueError(f"budget has shape {_shape(budget)}; expected {bshape}{per_resource}")
    full, agents = tuple(batch) + per, tuple(batch) + (n,)
    for name, val, target in (("lower", lower, full), ("upper", upper, full), ("init", init, full),
                              ("weights", weights, agents), ("mask", mask, agents)):
        _check_broadcast(name, val, target)
    for k, v in _fields(utility).items():
        _check_broadcast(f"{type(utility).__name__}.{k}", v, agents)

    _check_range("budget", budget, lo=0.0, expect="finite and >= 0")
    _check_range("alpha", alpha, lo=0.0, expect="finite and >= 0")
    if _shape(alpha) != ():
        raise ValueError(f"alpha has shape {_shape(alpha)}; expected a scalar")
    name = type(utility).__name__
    if isinstance(utility, PowerLaw):
        _check_range(f"{name}.gamma", utility.gamma, lo=0.0, hi=1.0, lo_open=True, expect="in (0, 1]")
        _check_range(f"{name}.e_init", utility.e_init, lo=0.0, expect="finite and >= 0 (initial resources)")
    elif two:
        # 0 is allowed here: a resource that does not help an agent (the study's data has one).
        for g in ("g1", "g2"):
            _check_range(f"{name}.{g}", getattr(utility, g), lo=0.0, hi=1.0, expect="in [0, 1]")
        for e in ("init1", "init2"):
            _check_range(f"{name}.{e}", getattr(utility, e), lo=0.0, expect="finite and >= 0 (initial resources)")
    if not isinstance(utility, Concave):
        _check_range(f"{name}.scale", utility.scale, lo=0.0, lo_open=True, expect="finite and > 0")
    _check_range("weights", weights, lo=0.0, lo_open=True, expect="finite and > 0")
    _check_range("lower", lower, lo=0.0, expect="finite and >= 0")
    _check_range("upper", upper, lo=0.0, finite=False, expect=">= 0 and not NaN")
    lo, up, b, m = _concrete(lower), _concrete(upper), _concrete(budget), _concrete(mask)
    if lo is not None and up is not None and np.any(np.broadcast_to(up, full) < np.broadcast_to(lo, full)):
        raise ValueError("upper must be >= lower for every agent; got an agent with upper < lower")
    if lo is not None and b is not None:
        lo_full = np.broadcast_to(lo, full).astype(float)
        if m is not None:
            mm = np.broadcast_to(m, tuple(batch) + (n,)).astype(bool)
            lo_full = np.where(mm[..., None] if two else mm, lo_full, 0.0)
        need = lo_full.sum(axis=batch_ndim)
        if np.any(need > b * (1 + 1e-12)):
            raise ValueError(
                f"lower sums to {need.max()!r}, above the budget {b.min()!r}: infeasible; "
                "expected sum(lower) <= budget"
            )


# --------------------------------------------------------------------------
# Water filling: clip(y - nu, lower, upper) with sum == total.


def _bisect_iters(dtype):
    # 2**-72 (2**-40) of any bracket up to ~1e6 wide is below the float64 (float32)
    # spacing of its endpoints; a fixed count also keeps vmapped solves in lockstep.
    return 72 if jnp.dtype(dtype) == jnp.float64 else 40


def _bisect(fun, lo, hi, args, solve=None):
    """Root of a monotone ``fun(t, *args)`` on ``[lo, hi]`` with ``jaxopt.Bisection``.

    The bracket enters through ``args`` as a unit-interval rescaling, never as a
    closure: jaxopt wraps ``run`` in a custom VJP, and closed-over tracers leak
    out of it under ``jit`` + ``grad``.

    Returns:
        ``(t, t_low, t_high, iterations)``: the implicit-diff root and the final bracket.
    """
    lo, hi = jax.lax.stop_gradient(lo), jax.lax.stop_gradient(hi)

    def unit(s, lo, hi, *args):
        return fun(lo + s * (hi - lo), *args)

    bis = jaxopt.Bisection(optimality_fun=unit, lower=0.0, upper=1.0, maxiter=_bisect_iters(lo.dtype),
                           tol=0.0, check_bracket=False, implicit_diff_solve=solve)
    s, state = bis.run(None, lo, hi, *args)
    return lo + s * (hi - lo), lo + state.low * (hi - lo), lo + state.high * (hi - lo), state.iter_num


def waterfill(y, lower, upper, total, mask=None):
    """Water filling: ``x = clip(y - nu, lower, upper)`` with ``sum(x) == total``.

    ``jaxopt.Bisection`` brackets ``nu``; one exact step on the free set then
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

    nu, _, _, _ = _bisect(excess, jnp.min(ys - us) - 1.0, jnp.max(ys - ls) + 1.0, (ys, ls, us, ts))
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


# --------------------------------------------------------------------------
# KKT diagnostics shared by every path.


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


# --------------------------------------------------------------------------
# Preparation: broadcast, mask, and the effective upper bound.


# Parameters that padding (masked) agents get, so nothing in them NaNs a gradient.
_PAD = {"gamma": 0.5, "g1": 0.5, "g2": 0.5}  # every other field: 1.0


def _prepare(utility, budget, lower, upper, weights, mask):
    """Mask canonical inputs (see ``_canonical``) and make every upper bound finite."""
    m2 = mask[:, None] if lower.ndim == 2 else mask
    weights = jnp.where(mask, weights, 1.0)
    lower, upper = jnp.where(m2, lower, 0.0), jnp.where(m2, upper, 0.0)
    # No agent can take more than what the others' lower bounds leave; this makes
    # every bound finite, so best responses and water filling stay finite.
    upper = jnp.minimum(upper, budget - (jnp.sum(lower, 0) - lower))
    if not isinstance(utility, Concave):
        utility = type(utility)(*(jnp.where(mask, v, _PAD.get(k, 1.0)) for k, v in utility._asdict().items()))
    return utility, lower, upper, weights


def _default_tol(dtype):
    return 1e-6 if jnp.dtype(dtype) == jnp.float64 else 1e-4


def _canonical(utility, budget, alpha, lower, upper, weights, mask, init=None, batch=()):
    """Every argument as an array of its full shape and one float dtype.

    One input structure means one compiled solve per (shape, dtype, method),
    whether callers pass scalars, ``None`` or arrays. Concrete inputs are
    broadcast with numpy (no device dispatch); traced ones with jnp.
    """
    dtype = jnp.result_type(*jax.tree_util.tree_leaves((utility, budget)), float)
    n = _num_agents(utility, len(batch))
    two = isinstance(utility, CobbDouglas)
    agents, full = (*batch, n), (*batch, n, 2) if two else (*batch, n)

    def arr(x, shape, dt=dtype):
        if _concrete(x) is not None:
            return np.broadcast_to(np.asarray(x, dt), shape).copy()  # contiguous: fast transfer
        return jnp.broadcast_to(jnp.asarray(x, dt), shape)

    if not isinstance(utility, Concave):
        utility = type(utility)(*(arr(v, agents) for v in utility))
    budget = arr(budget, (*batch, 2) if two else batch)
    alpha = arr(alpha, ())
    lower, upper = arr(lower, full), arr(np.inf if upper is None else upper, full)
    weights, mask = arr(1.0 if weights is None else weights, agents), arr(True if mask is None else mask, agents, bool)
    return utility, budget, alpha, lower, upper, weights, mask, None if init is None else arr(init, full)


# --------------------------------------------------------------------------
# Fast path: dual bisection over closed-form power-law best responses.


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
    t, t_a, t_b, iters = _bisect(_budget_excess, t_lo, t_hi, (log_c, k, e, lower, upper, budget), _scalar_solve)
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


# --------------------------------------------------------------------------
# Generic path: projected gradient with the box-and-budget projection.


def _neg_welfare(x, utility, weights, alpha, mask):
    return -_objective(utility.value(jnp.where(mask, x, 0.0)), weights, alpha, mask)


def _solve_projected(utility, budget, alpha, lower, upper, weights, mask, init, tol, maxiter):
    hyper = (lower, upper, budget)
    x0 = waterfill(jnp.zeros_like(lower), lower, upper, budget) if init is None else project_box_budget(init, hyper)
    pg = jaxopt.ProjectedGradient(
        fun=_neg_welfare,
        projection=project_box_budget,
        maxiter=maxiter,
        # Marginals near a zero initial resource are steep (alpha > 0): the line
        # search must be able to shrink the step by many decades.
        maxls=60,
        acceleration=False,
        tol=tol,
        implicit_diff_solve=functools.partial(jaxopt.linear_solve.solve_gmres, tol=1e-12),
    )
    x, state = pg.run(x0, hyper, utility, weights, alpha, mask)
    g = _phi_marginal(utility.value(x), utility.marginal(x), weights, alpha, mask)
    lam = _multiplier_estimate(x, g, lower, upper, budget, mask)
    return x, lam, state.iter_num


# --------------------------------------------------------------------------
# Two resources: block coordinate ascent with exact dual blocks.


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

    @jaxopt.implicit_diff.custom_fixed_point(_cd_sweep, has_aux=True,
                                             solve=functools.partial(jaxopt.linear_solve.solve_gmres, tol=1e-12))
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


def _solve_cobb_douglas(cd, budget, alpha, lower, upper, weights, mask, init, tol, maxiter, study):
    """Returns (x_study, x_joint, sweeps) for prepared Cobb-Douglas inputs."""
    theta = (cd, budget, alpha, lower, upper, weights, mask)
    # The study's starting point: an even split of each budget.
    x0 = _cd_even_split(lower, upper, budget) if init is None else init
    x_joint, (x_study, sweeps) = _cd_joint(jax.lax.stop_gradient(x0), theta, tol, maxiter)
    if study:
        # The joint loop's first sweep carries no gradient; retrace it to get one.
        x_study = _cd_sweep(x0, *theta)
    return x_study, x_joint, sweeps


# --------------------------------------------------------------------------
# Assembly and the public solve.


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


_METHODS = {PowerLaw: ("dual", "projected"), Concave: ("projected",), CobbDouglas: ("joint", "study")}


def _solve_impl(utility, budget, alpha, lower, upper, weights, mask, init, *, method, tol, maxiter):
    utility, lower, upper, weights = _prepare(utility, budget, lower, upper, weights, mask)
    tol = _default_tol(budget.dtype) if tol is None else tol
    common = (weights, alpha, mask, budget, lower, upper)
    if method == "dual":
        x, lam, it = _solve_dual(utility, budget, alpha, lower, upper, weights, mask)
        return _assemble(utility, x, *common, lam, it, tol)
    if method == "projected":
        # The projected-gradient step test is looser than KKT; converged is KKT.
        x, lam, it = _solve_projected(utility, budget, alpha, lower, upper, weights, mask, init,
                                      tol=tol * 1e-3, maxiter=maxiter or 5000)
        return _assemble(utility, x, *common, lam, it, tol)
    x_study, x_joint, sweeps = _solve_cobb_douglas(utility, budget, alpha, lower, upper, weights, mask, init,
                                                   tol, maxiter or 1000, study=method == "study")
    theta = (utility, budget, alpha, lower, upper, weights, mask)
    gap = (_objective(utility.value(x_joint), weights, alpha, mask)
           - _objective(utility.value(x_study), weights, alpha, mask))
    x = x_study if method == "study" else x_joint
    res, lams = _cd_residual(x, *theta)
    # The study's pass is judged like any solve: converged only at a KKT point
    # (alpha = 1, where the resources separate); `gap` says how far it fell short.
    return _assemble(utility, x, *common, lams, 1 if method == "study" else sweeps, tol, gap=gap, residual=res)


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
            ``"joint"`` (iterate to convergence, default) or ``"study"`` (the
            study's single block-coordinate pass) for two resources.
        tol: KKT tolerance behind ``converged``; default 1e-6 (float64) / 1e-4 (float32).
        maxiter: projected-gradient steps (5000) or BCD sweeps (1000).
        init: optional starting allocation for the iterative paths.

    Returns:
        ``Allocation``; ``converged`` is False whenever the relative KKT residual
        exceeds ``tol`` or an output is not finite (so a ``"study"`` pass is
        converged only where one pass is optimal; its shortfall is ``gap``).

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


# --------------------------------------------------------------------------
# Baselines: same signature and result type as the FairSynergy allocator.


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


# --------------------------------------------------------------------------
# Learning-curve fitting.


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
    lm = jaxopt.LevenbergMarquardt(residual_fun=_fit_residual, maxiter=maxiter, tol=tol, xtol=0.0, gtol=0.0,
                                   solver="cholesky", materialize_jac=True)
    p, state = lm.run(_fit_init(x, acc), x, acc)
    return PowerLawFit(jnp.exp(p[0]), p[1], jnp.exp(p[2]), 0.5 * jnp.sum(_fit_residual(p, x, acc) ** 2),
                       state.error <= tol, state.iter_num)


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
