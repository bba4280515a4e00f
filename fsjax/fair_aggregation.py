"""The CUP study's server updates: Horvitz-Thompson (CUP), AFL and FedFV (REFERENCE.md B).

None of them is a ratio of per-client sums with fixed coefficients (HT needs
each slot's inclusion probability, AFL a state over all C clients, FedFV the
pairwise conflicts), so like :mod:`fsjax.robust` they have no
``client_terms``/``finish`` (both ``None``) and run on the stacked path. Their
``apply`` takes, besides FedAvg's arguments, a keyword ``context``:

    apply(state, params, deltas[K], weights f32[K], losses f32[K], context=SlotContext)

:class:`SlotContext` holds what the round knows about each slot: the client
index (AFL), the inclusion probability q of the slot's client from
``Selection.probs`` and its availability estimate pi(t) (HT). A slot is used
when its weight is > 0 (valid, finite, not failed); ``losses`` are F_k(w_t),
the global model's loss on the client's data before training (AFL).

- :func:`horvitz_thompson`: ``w += sum_used min(1 / (N max(q pi, 1e-12)), clip)
  (w_k - w)``; ``normalise=True`` divides the multipliers by their sum (Hajek).
- :func:`afl`: ``w += eta_w sum_used (lam_k / sum_used lam)(w_k - w)``, then
  ``lam_k *= exp(eta_l F_k)`` for the used clients and renormalised.
- :func:`fedfv`: conflicting deltas projected apart, then example-weighted mean.

The step goes through the server optimizer like every aggregator (``sgd(1.0)``
applies it as is); with no used slot params and state stay unchanged.

Example:
  >>> import numpy as np
  >>> m = ht_multipliers(jnp.array([0.5, 1.0]), jnp.array([0.5, 1.0]), jnp.array([True, True]), 4)
  >>> m.tolist()
  [1.0, 0.25]
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


class SlotContext(NamedTuple):
    """What the round passes to the CUP study's aggregators, per slot.

    Attributes:
      slots: i32[K]  # client index of each slot (0 in padding)
      probs: f32[K]  # q: inclusion probability of the slot's client (Selection.probs)
      avail_prob: f32[K]  # pi_k(t): availability estimate of the slot's client, round t included
    """

    slots: Array
    probs: Array
    avail_prob: Array


def _check_clients(num_clients: Any) -> int:
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(f"num_clients={num_clients!r}: expected the population size N, "
                         "an integer >= 1 (the simulation passes it)")
    return int(num_clients)


def _positive(name: str, value: Any, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (math.isfinite(v) and (v >= 0 if allow_zero else v > 0)):
        raise ValueError(f"{name}={value!r}: expected a finite number {'>= 0' if allow_zero else '> 0'}")
    return v


def _need_context(context, name: str) -> SlotContext:
    if context is None:
        raise ValueError(f"aggregation {name!r} needs context=SlotContext(slots, probs, avail_prob) "
                         "in apply (the round's slots and inclusion probabilities)")
    return context


@jax.jit
def ht_multipliers(probs: Array, avail_prob: Array, used: Array, num_clients,
                   clip: float = 100.0, floor: float = 1e-12) -> Array:
    """Horvitz-Thompson multipliers ``min(1 / (N max(q_k pi_k, floor)), clip)``, 0 if unused.

    Args:
      probs: f32[K] inclusion probabilities q.
      avail_prob: f32[K] availability estimates pi.
      used: bool[K] slots whose update is used.
      num_clients: N.
      clip: cap on a multiplier.
      floor: floor of ``q pi``.

    Returns:
      f32[K].

    Example:
      >>> ht_multipliers(jnp.array([0.1]), jnp.array([0.01]), jnp.array([True]), 2).tolist()
      [100.0]
    """
    p = jnp.maximum(jnp.asarray(probs, jnp.float32) * jnp.asarray(avail_prob, jnp.float32), floor)
    mult = jnp.minimum(1.0 / (jnp.asarray(num_clients, jnp.float32) * p), clip)
    return jnp.where(jnp.asarray(used, bool), mult, 0.0)


def _weighted_step(deltas, coef):
    """``sum_k coef_k delta_k`` over the K stacked deltas (0 where coef is 0, even if NaN)."""
    def one(d):
        c = coef.reshape((-1,) + (1,) * (d.ndim - 1)).astype(d.dtype)
        return jnp.sum(jnp.where(c != 0, c * d, 0.0), axis=0)
    return jax.tree.map(one, deltas)


def _server_step(opt, opt_state, params, step, any_used):
    """Applies ``step`` through the server optimizer; unchanged when nothing was used."""
    grads = jax.tree.map(lambda s: -jnp.where(any_used, s, 0.0), step)
    updates, new_state = opt.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(any_used, a, b), new, old)
    return keep(new_params, params), keep(new_state, opt_state)


def horvitz_thompson(num_clients: int, normalise: bool = False, clip: float = 100.0,
                     floor: float = 1e-12, opt: optax.GradientTransformation | None = None):
    """CUP's Horvitz-Thompson corrected update (REFERENCE B.1 step 6).

    ``step = sum_used m_k delta_k`` with ``m_k`` = :func:`ht_multipliers`
    (not normalised: the study's form); ``normalise=True`` uses ``m_k / sum m``
    (the self-normalised Hajek form, a weighted mean of the deltas). Example
    counts do not enter (the target is the uniform client average); weights
    only mark the used slots.

    Args:
      num_clients: N, the population size.
      normalise: Hajek instead of Horvitz-Thompson.
      clip: cap on a multiplier (> 0).
      floor: floor of ``q pi`` (> 0).
      opt: server optimizer (default ``sgd(1.0)``).

    Returns:
      An :class:`fsjax.aggregation.Aggregator` whose ``apply`` needs ``context``.

    Example:
      >>> agg = horvitz_thompson(num_clients=4)
      >>> p = {"w": jnp.zeros(2)}
      >>> d = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
      >>> ctx = SlotContext(jnp.array([0, 1]), jnp.array([0.5, 1.0]), jnp.array([0.5, 1.0]))
      >>> agg.apply(agg.init(p), p, d, jnp.ones(2), jnp.zeros(2), context=ctx)[0]["w"].tolist()
      [1.0, 0.25]
    """
    from fsjax.aggregation import Aggregator   # fsjax.aggregation registers this module
    n = _check_clients(num_clients)
    clip_f, floor_f = _positive("clip", clip), _positive("floor", floor)
    opt = opt or optax.sgd(1.0)
    hajek = bool(normalise)

    def apply(state, params, deltas, weights, losses, context=None):
        del losses
        ctx = _need_context(context, "horvitz_thompson")
        used = jnp.asarray(weights, jnp.float32) > 0
        mult = ht_multipliers(ctx.probs, ctx.avail_prob, used, n, clip_f, floor_f)
        total = jnp.sum(mult)
        if hajek:
            mult = mult / jnp.where(total > 0, total, 1.0)
        return _server_step(opt, state, params, _weighted_step(deltas, mult), jnp.any(used))

    return Aggregator(opt.init, apply, None, None)


class AFLState(NamedTuple):
    """Attributes:
      opt_state: the server optimizer's state
      lam: f32[C]  # the adversarial mixture over all clients (on the simplex)
    """

    opt_state: Any
    lam: Array


def afl(num_clients: int, eta_l: float = 0.1, eta_w: float = 1.0,
        opt: optax.GradientTransformation | None = None):
    """Agnostic federated learning (Mohri et al. 2019) as the CUP study runs it (B.3).

    ``lambda`` over all N clients starts uniform. With the used slots U:
    ``w <- w + eta_w sum_{k in U} (lam_k / sum_{j in U} lam_j)(w_k - w)`` (the
    lambda from before the round), then ``lam_k *= exp(eta_l F_k)`` for k in U
    and lambda is renormalised to sum 1 (done in log space). ``F_k`` is
    ``losses`` (the global model's loss on k's data before training).

    Args:
      num_clients: N.
      eta_l: lambda's step size (>= 0).
      eta_w: the model's step size (> 0).
      opt: server optimizer (default ``sgd(1.0)``).

    Returns:
      An :class:`fsjax.aggregation.Aggregator` with state :class:`AFLState`;
      ``apply`` needs ``context`` (its ``slots``).

    Example:
      >>> agg = afl(num_clients=3)
      >>> p = {"w": jnp.zeros(1)}
      >>> ctx = SlotContext(jnp.array([2, 0]), jnp.ones(2), jnp.ones(2))
      >>> new, st = agg.apply(agg.init(p), p, {"w": jnp.array([[1.0], [3.0]])}, jnp.ones(2),
      ...                     jnp.array([1.0, 0.0]), context=ctx)
      >>> new["w"].tolist(), round(float(st.lam.sum()), 6)
      ([2.0], 1.0)
    """
    from fsjax.aggregation import Aggregator
    n = _check_clients(num_clients)
    eta_l_f, eta_w_f = _positive("eta_l", eta_l, allow_zero=True), _positive("eta_w", eta_w)
    opt = opt or optax.sgd(1.0)

    def init(params):
        return AFLState(opt.init(params), jnp.full((n,), 1.0 / n, jnp.float32))

    def apply(state, params, deltas, weights, losses, context=None):
        ctx = _need_context(context, "afl")
        used = jnp.asarray(weights, jnp.float32) > 0
        slots = jnp.asarray(ctx.slots, jnp.int32)
        lam_k = jnp.where(used, state.lam[slots], 0.0)
        mass = jnp.sum(lam_k)
        coef = eta_w_f * lam_k / jnp.where(mass > 0, mass, 1.0)
        new_params, opt_state = _server_step(opt, state.opt_state, params,
                                             _weighted_step(deltas, coef), mass > 0)
        f = jnp.nan_to_num(jnp.asarray(losses, jnp.float32), nan=0.0, posinf=0.0, neginf=0.0)
        bump = jnp.zeros((n,), jnp.float32).at[slots].add(jnp.where(used, eta_l_f * f, 0.0))
        logits = jnp.log(state.lam) + bump
        lam = jax.nn.softmax(logits)
        lam = jnp.where(jnp.any(used), lam, state.lam)
        return new_params, AFLState(opt_state, lam)

    return Aggregator(init, apply, None, None)


def _flatten(deltas) -> Array:
    return jnp.concatenate([jnp.reshape(d, (d.shape[0], -1)).astype(jnp.float32)
                            for d in jax.tree.leaves(deltas)], axis=1)


@jax.jit
def fedfv_project(flat: Array, used: Array) -> Array:
    """FedFV's conflict projection (REFERENCE B.3), as the study computes it.

    For i = 0..K-1, for j = 0..K-1, j != i, in order: if ``<D_i, D_j> < 0``
    (and ``||D_j|| > 0``), ``D_i -= (<D_i, D_j> / ||D_j||^2) D_j``. The deltas
    are modified in place, so for ``j < i`` the already projected ``D_j`` is
    used (as in the study's code); unused slots take no part.

    Args:
      flat: f32[K, D] flattened deltas.
      used: bool[K].

    Returns:
      f32[K, D].

    Example:
      >>> fedfv_project(jnp.array([[1.0, 0.0], [-1.0, 1.0]]), jnp.ones(2, bool)).tolist()
      [[0.5, 0.5], [-1.0, 1.0]]
    """
    k = flat.shape[0]
    flat = jnp.where(used[:, None], flat, 0.0)

    def outer(i, d):
        def inner(j, d):
            di, dj = d[i], d[j]
            dot, norm = jnp.dot(di, dj), jnp.dot(dj, dj)
            hit = (j != i) & used[i] & used[j] & (dot < 0) & (norm > 0)
            new = di - jnp.where(hit, dot / jnp.where(norm > 0, norm, 1.0), 0.0) * dj
            return d.at[i].set(new)
        return jax.lax.fori_loop(0, k, inner, d)

    return jax.lax.fori_loop(0, k, outer, flat)


def fedfv(opt: optax.GradientTransformation | None = None):
    """FedFV (Wang et al. 2021) as the CUP study runs it: :func:`fedfv_project`,
    then the example-weighted mean of the projected deltas.

    Example:
      >>> agg = fedfv()
      >>> p = {"w": jnp.zeros(2)}
      >>> d = {"w": jnp.array([[1.0, 0.0], [-1.0, 0.0]])}
      >>> agg.apply(agg.init(p), p, d, jnp.ones(2), jnp.zeros(2))[0]["w"].tolist()
      [-0.5, 0.0]
    """
    from fsjax.aggregation import Aggregator
    opt = opt or optax.sgd(1.0)

    def apply(state, params, deltas, weights, losses, context=None):
        del losses, context
        w = jnp.asarray(weights, jnp.float32)
        used = w > 0
        proj = fedfv_project(_flatten(deltas), used)
        total = jnp.sum(jnp.where(used, w, 0.0))
        coef = jnp.where(used, w, 0.0) / jnp.where(total > 0, total, 1.0)
        mean = coef @ proj
        # unflatten the mean step into the params' tree
        leaves, tree = jax.tree.flatten(deltas)
        out, off = [], 0
        for leaf in leaves:
            size = math.prod(leaf.shape[1:])
            out.append(mean[off:off + size].reshape(leaf.shape[1:]).astype(leaf.dtype))
            off += size
        return _server_step(opt, state, params, jax.tree.unflatten(tree, out), jnp.any(used))

    return Aggregator(opt.init, apply, None, None)
