"""Server-side aggregation of client updates: FedAvg, FedProx, q-FFL.

An :class:`Aggregator` is a pair of pure functions, like an optax transform:

- ``init(params) -> state``: the server optimizer's state.
- ``apply(state, params, deltas, weights, losses) -> (params, state)`` with
  ``deltas`` a params pytree with a leading K axis (client minus global),
  ``weights`` f32[K] (examples per client, already zero for invalid, failed or
  dropped slots) and ``losses`` f32[K] (loss of the global model on each
  client's data, used by q-FFL).

The averaged update is treated as a negative pseudo-gradient and passed to an
optax server optimizer (Reddi et al. 2021, "Adaptive Federated Optimization"):
``sgd(1.0)`` gives plain FedAvg, ``momentum`` FedAvgM, ``adam`` FedAdam. When
every weight is zero (nobody reported back) params and state stay unchanged.

Example:
  >>> agg = fedavg(server_optimizer("sgd", lr=1.0))
  >>> state = agg.init(params)  # doctest: +SKIP
  >>> params, state = agg.apply(state, params, deltas, weights, losses)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


class Aggregator(NamedTuple):
    init: Callable    # init(params) -> state
    apply: Callable   # apply(state, params, deltas[K], weights f32[K], losses f32[K]) -> (params, state)


def server_optimizer(name: str = "sgd", lr: float = 1.0, momentum: float = 0.9,
                     b1: float = 0.9, b2: float = 0.99, eps: float = 1e-3
                     ) -> optax.GradientTransformation:
    """The server optimizer applied to the averaged update.

    Args:
      name: ``"sgd"`` (plain), ``"momentum"`` (heavy ball) or ``"adam"``.
      lr: server learning rate (1.0 with sgd is FedAvg).
      momentum: momentum of ``"momentum"``.
      b1, b2, eps: Adam's parameters (``eps=1e-3`` as in FedAdam).
    """
    if lr <= 0:
        raise ValueError(f"server lr={lr}: expected a positive learning rate")
    if name == "sgd":
        return optax.sgd(lr)
    if name == "momentum":
        return optax.sgd(lr, momentum=momentum)
    if name == "adam":
        return optax.adam(lr, b1=b1, b2=b2, eps=eps)
    raise ValueError(f"server optimizer={name!r}: expected 'sgd', 'momentum' or 'adam'")


def _weighted_mean(deltas, weights):
    total = jnp.sum(weights)
    w = weights / jnp.where(total > 0, total, 1.0)
    return jax.tree.map(lambda d: jnp.tensordot(w, jnp.where(
        (weights > 0).reshape((-1,) + (1,) * (d.ndim - 1)), d, 0.0), axes=1), deltas)


def _server_step(opt, state, params, update, any_weight):
    """Applies ``update`` (a step direction) through the server optimizer."""
    grads = jax.tree.map(jnp.negative, update)
    updates, new_state = opt.update(grads, state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(any_weight, a, b), new, old)
    return keep(new_params, params), keep(new_state, state)


def fedavg(opt: optax.GradientTransformation | None = None) -> Aggregator:
    """FedAvg (McMahan et al. 2017): example-weighted mean of client deltas.

    Slots with weight 0 never enter the mean, even if their delta is NaN.
    """
    opt = opt or optax.sgd(1.0)

    def apply(state, params, deltas, weights, losses):
        del losses
        weights = jnp.asarray(weights, jnp.float32)
        update = _weighted_mean(deltas, weights)
        return _server_step(opt, state, params, update, jnp.sum(weights) > 0)

    return Aggregator(opt.init, apply)


def fedprox(opt: optax.GradientTransformation | None = None) -> Aggregator:
    """FedProx (Li et al. 2020): the proximal term ``mu`` acts on the clients
    (``local.make_local_train(mu=...)``); the server averages as FedAvg."""
    return fedavg(opt)


def qffl(q: float = 1.0, lipschitz: float = 10.0,
         opt: optax.GradientTransformation | None = None) -> Aggregator:
    """q-FedAvg of Li, Sanjabi, Beirami & Smith (ICLR 2020), Algorithm 2.

    With ``F_k`` the loss of the global model on client k and
    ``dw_k = L * (w - w_k) = -L * delta_k``:

        Delta_k = F_k^q * dw_k
        h_k     = q * F_k^(q-1) * ||dw_k||^2 + L * F_k^q
        w_new   = w - sum_k Delta_k / sum_k h_k

    Larger ``q`` gives clients with higher loss more weight; ``q = 0`` is the
    unweighted mean of the deltas (FedAvg with equal weights). Weights only
    mask slots (> 0 counts); q-FFL does not weight by examples.

    Args:
      q: fairness parameter, >= 0.
      lipschitz: the Lipschitz constant L (the paper uses 1 / local lr).
      opt: server optimizer for the resulting step (default ``sgd(1.0)``).
    """
    if q < 0:
        raise ValueError(f"q={q}: expected q >= 0")
    if lipschitz <= 0:
        raise ValueError(f"lipschitz={lipschitz}: expected L > 0")
    opt = opt or optax.sgd(1.0)

    def apply(state, params, deltas, weights, losses):
        mask = jnp.asarray(weights) > 0
        f = jnp.where(mask, jnp.maximum(losses, 1e-10), 1.0)
        clean = jax.tree.map(lambda d: jnp.where(
            mask.reshape((-1,) + (1,) * (d.ndim - 1)), d, 0.0), deltas)
        sq = sum(jnp.sum(jnp.square(d.reshape(d.shape[0], -1)), axis=1)
                 for d in jax.tree.leaves(clean)) * lipschitz ** 2
        fq = f ** q
        h = jnp.where(mask, q * f ** (q - 1) * sq + lipschitz * fq, 0.0)
        scale = jnp.where(mask, fq * lipschitz, 0.0) / jnp.maximum(jnp.sum(h), 1e-30)
        # w - sum(F^q * -L * delta) / sum(h)  ==  w + sum(scale_k * delta_k)
        update = jax.tree.map(lambda d: jnp.tensordot(scale, d, axes=1), clean)
        return _server_step(opt, state, params, update, jnp.any(mask))

    return Aggregator(opt.init, apply)


REGISTRY: dict[str, Callable[..., Aggregator]] = {"fedavg": fedavg, "fedprox": fedprox,
                                                  "qffl": qffl}


def make(name: str, opt: optax.GradientTransformation | None = None, **params: Any) -> Aggregator:
    """Builds a registered aggregator, e.g. ``make("qffl", q=1.0, lipschitz=10.0)``."""
    if name not in REGISTRY:
        raise ValueError(f"aggregation name={name!r}: expected one of {sorted(REGISTRY)}")
    return REGISTRY[name](opt=opt, **params)
