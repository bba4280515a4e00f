"""The boundary between user input and the solvers.

* :func:`_validate` -- ``ValueError`` naming the argument for bad input, before
  any solve: shapes always, values only for concrete (untraced) inputs.
* :func:`_canonical` -- every argument as an array of its full shape and one dtype.
* :func:`_prepare` -- inside jit: mask padding agents and make every upper bound finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fsjax.allocation.utilities import CobbDouglas, Concave, PowerLaw


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

