"""Server-side aggregation of client updates: FedAvg, FedProx, q-FFL.

Every aggregator here is a ratio of sums over clients: client k contributes a
coefficient ``c_k`` (times its delta) and a normaliser ``h_k``, and the
server's step is ``sum_k c_k * delta_k / sum_k h_k``. An :class:`Aggregator`
holds pure functions, like an optax transform:

- ``init(params) -> state``: the server optimizer's state.
- ``client_terms(delta, weight, loss) -> (c, h)``: ONE client's share, from its
  delta (client minus global params), its weight (examples, already 0 for
  invalid, failed or dropped slots) and the loss of the global model on its
  data (q-FFL's F_k).
- ``finish(state, params, sum_c_delta, sum_h) -> (params, state)``: the
  server step from the two sums.
- ``apply(state, params, deltas, weights, losses) -> (params, state)``: the
  same over K stacked clients (deltas with a leading K axis).

Because a client's share depends on that client alone, the engine can reduce
clients as it trains them (``engine.train_and_reduce``) instead of stacking K
deltas: memory stays at one model per chunk of clients, whatever K.

The step is treated as a negative pseudo-gradient and passed to an optax
server optimizer (Reddi et al. 2021, "Adaptive Federated Optimization"):
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

from fsjax import fair_aggregation, robust


class Aggregator(NamedTuple):
    init: Callable          # init(params) -> state
    apply: Callable         # apply(state, params, deltas[K], weights f32[K], losses f32[K]) -> (params, state)
    client_terms: Callable  # client_terms(delta, weight f32[], loss f32[]) -> (c f32[], h f32[])
    finish: Callable        # finish(state, params, sum_c_delta, sum_h f32[]) -> (params, state)


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


def scaled_delta(delta, c):
    """``c * delta``, 0 where ``c == 0``: a left-out slot's delta (possibly NaN)
    never enters a sum. The one place both :meth:`Aggregator.apply` and
    ``engine.train_and_reduce`` form a client's share."""
    return jax.tree.map(lambda d: jnp.where(c > 0, c * d, 0.0), delta)


def _make(opt: optax.GradientTransformation, client_terms: Callable) -> Aggregator:
    """An aggregator from its per-client terms: the server step is sum(c delta) / sum(h)."""

    def finish(state, params, sum_c_delta, sum_h):
        any_weight = sum_h > 0
        step = jax.tree.map(lambda t: t / jnp.where(any_weight, sum_h, 1.0), sum_c_delta)
        grads = jax.tree.map(jnp.negative, step)
        updates, new_state = opt.update(grads, state, params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(any_weight, a, b), new, old)
        return keep(new_params, params), keep(new_state, state)

    def apply(state, params, deltas, weights, losses):
        c, h = jax.vmap(client_terms)(deltas, jnp.asarray(weights, jnp.float32),
                                      jnp.asarray(losses, jnp.float32))
        sum_c_delta = jax.tree.map(lambda t: jnp.sum(t, axis=0),
                                   jax.vmap(scaled_delta)(deltas, c))
        return finish(state, params, sum_c_delta, jnp.sum(h))

    return Aggregator(opt.init, apply, client_terms, finish)


def fedavg(opt: optax.GradientTransformation | None = None) -> Aggregator:
    """FedAvg (McMahan et al. 2017): example-weighted mean of client deltas.

    ``c_k = h_k = weight_k``. Slots with weight 0 never enter the mean, even if
    their delta is NaN.
    """

    def client_terms(delta, weight, loss):
        del delta, loss
        return weight, weight

    return _make(opt or optax.sgd(1.0), client_terms)


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

    so ``c_k = L * F_k^q``. Larger ``q`` gives clients with higher loss more
    weight; ``q = 0`` is the unweighted mean of the deltas (FedAvg with equal
    weights). Weights only mask slots (> 0 counts); q-FFL does not weight by
    examples.

    Args:
      q: fairness parameter, >= 0.
      lipschitz: the Lipschitz constant L (the paper uses 1 / local lr).
      opt: server optimizer for the resulting step (default ``sgd(1.0)``).
    """
    if q < 0:
        raise ValueError(f"q={q}: expected q >= 0")
    if lipschitz <= 0:
        raise ValueError(f"lipschitz={lipschitz}: expected L > 0")

    def client_terms(delta, weight, loss):
        mask = weight > 0
        f = jnp.where(mask, jnp.maximum(loss, 1e-10), 1.0)
        sq = sum(jnp.sum(jnp.square(jnp.where(mask, d, 0.0))) for d in jax.tree.leaves(delta))
        sq = sq * lipschitz ** 2
        c = jnp.where(mask, lipschitz * f ** q, 0.0)
        h = jnp.where(mask, q * f ** (q - 1) * sq + lipschitz * f ** q, 0.0)
        return c, h

    return _make(opt or optax.sgd(1.0), client_terms)


REGISTRY: dict[str, Callable[..., Aggregator]] = {"fedavg": fedavg, "fedprox": fedprox,
                                                  "qffl": qffl}
# Robust aggregators (fsjax.robust) are order statistics of the K stacked deltas, not
# sums of client terms: their client_terms and finish are None (no fused chunked path).
REGISTRY.update(median=robust.median, trimmed_mean=robust.trimmed_mean, krum=robust.krum)
# The CUP study's server updates (fsjax.fair_aggregation) take the stacked path too.
# horvitz_thompson and afl take num_clients (the simulation passes it) and read the
# round's SlotContext (slots, inclusion probabilities, availability estimates) in apply.
REGISTRY.update(horvitz_thompson=fair_aggregation.horvitz_thompson, afl=fair_aggregation.afl,
                fedfv=fair_aggregation.fedfv)


def make(name: str, opt: optax.GradientTransformation | None = None, **params: Any) -> Aggregator:
    """Builds a registered aggregator, e.g. ``make("qffl", q=1.0, lipschitz=10.0)``."""
    if name not in REGISTRY:
        raise ValueError(f"aggregation name={name!r}: expected one of {sorted(REGISTRY)}")
    return REGISTRY[name](opt=opt, **params)
