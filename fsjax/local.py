"""Local training for ONE client, written once; the engine maps it over clients.

A client holds a padded shard (``x[N_max]``, ``y[N_max]``, ``n`` valid rows).
Mini-batches are drawn inside the compiled code: every epoch is a fresh random
permutation of the valid rows, and step ``s`` takes the ``batch_size`` rows at
positions ``s*B .. s*B+B-1`` of the concatenated epochs, so ``max_steps *
batch_size <= n`` visits each example at most once. The number of steps is
data (``steps <= max_steps``): the step loop runs ``steps`` times (under
``vmap``, to the largest count with finished clients masked), so per-client
step counts never recompile.

``loss0`` (q-FFL's, AFL's and FairFedCS's ``F_k``, the ``loss_reduction``
utility's baseline) is the mean loss of the initial (global) params over all
of the client's valid rows, computed before training with one forward pass
over the padded shard (in row chunks of ``loss0_chunk``, unrolled, so memory
stays bounded and XLA:CPU convolutions stay out of a while loop).

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> from fsjax import models
  >>> model = models.build("mlp", num_classes=2, hidden=(8,))
  >>> params = models.init_params(model, jax.random.key(0), (4, 4, 1))
  >>> train = make_local_train(model.apply, optax.sgd(0.1), batch_size=4, max_steps=3)
  >>> shard = Shard(jnp.zeros((16, 4, 4, 1), jnp.uint8), jnp.zeros(16, jnp.int32), jnp.int32(10))
  >>> out = train(params, shard, jnp.int32(2), jax.random.key(1))
  >>> int(out.steps)
  2
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


class Shard(NamedTuple):
    """One client's padded training data."""

    x: jax.Array  # u8[N_max, ...]  examples; rows >= n are padding
    y: jax.Array  # i32[N_max]      labels
    n: jax.Array  # i32[]           valid rows


class LocalResult(NamedTuple):
    """What local training returns for one client (a leading K axis when mapped)."""

    delta: Any         # params pytree: trained params minus the initial params
    loss: jax.Array    # f32[]  mean mini-batch loss over the steps done (0 if none)
    loss0: jax.Array   # f32[]  F_k: mean loss of the initial (global) params over all n
    #                          valid rows of the shard, before training (0 if n = 0;
    #                          with loss0="first_batch": on the first mini-batch, 0 if no step)
    steps: jax.Array   # i32[]  steps done


def batch_rows(key: jax.Array, n: jax.Array, n_max: int, step: jax.Array,
               batch_size: int) -> jax.Array:
    """Rows of the valid part ``[0, n)`` used by mini-batch ``step``.

    Position ``p = step*B + j`` lies in epoch ``p // n`` at rank ``p % n`` of
    that epoch's permutation (``argsort`` of uniform keys, padding sorted last).

    Returns:
      i32[batch_size] row indices in ``[0, max(n, 1))``.
    """
    n = jnp.maximum(n, 1)
    pos = step * batch_size + jnp.arange(batch_size)
    valid = jnp.arange(n_max) < n

    def row(p):
        u = jax.random.uniform(jax.random.fold_in(key, p // n), (n_max,))
        return jnp.argsort(jnp.where(valid, u, 2.0))[p % n]

    return jax.vmap(row)(pos)


LOSS0 = ("shard", "first_batch")


def shard_loss(apply_fn: Callable, params, shard: Shard, chunk: int = 256) -> jax.Array:
    """f32[]: mean cross-entropy of ``params`` over the ``n`` valid rows of ``shard``.

    One forward pass over the padded rows in static chunks of ``chunk`` rows (a
    Python loop, so it is unrolled: no while loop around convolutions), padding
    masked out; 0 when ``n = 0``. Jittable and vmappable over ``shard``.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits``.
      params: the model parameters.
      shard: one client's padded data.
      chunk: rows per forward pass (bounds activation memory).

    Returns:
      The masked mean loss, f32[].

    Example:
      >>> import jax, jax.numpy as jnp
      >>> apply = lambda p, x: jnp.zeros((x.shape[0], 4))     # uniform logits
      >>> shard = Shard(jnp.zeros((5, 2)), jnp.zeros(5, jnp.int32), jnp.int32(3))
      >>> round(float(shard_loss(apply, None, shard, chunk=2)), 4)   # log(4)
      1.3863
    """
    n_max = shard.y.shape[0]
    total = jnp.float32(0.0)
    for start in range(0, n_max, max(1, int(chunk))):
        stop = min(n_max, start + max(1, int(chunk)))
        logits = apply_fn(params, shard.x[start:stop])
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, shard.y[start:stop])
        mask = jnp.arange(start, stop) < shard.n
        total = total + jnp.sum(jnp.where(mask, losses, 0.0))
    return jnp.where(shard.n > 0, total / jnp.maximum(shard.n, 1), 0.0).astype(jnp.float32)


def make_local_train(apply_fn: Callable, optimizer: optax.GradientTransformation, *,
                     batch_size: int, max_steps: int, mu: float = 0.0,
                     unroll: int | bool = 1, loss0: str = "shard",
                     loss0_chunk: int = 256) -> Callable:
    """Builds ``local_train(params, shard, steps, key) -> LocalResult`` for one client.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits`` (e.g. a Flax ``model.apply``).
      optimizer: the client optimizer; its state starts fresh every round.
      batch_size: examples per step.
      max_steps: static upper bound on steps.
      mu: FedProx proximal weight: adds ``mu/2 * ||w - w_global||^2`` to the loss.
      unroll: ``1`` (default): a loop of ``steps`` iterations; otherwise the
        ``lax.scan`` unroll over ``max_steps`` (``True`` = fully unrolled; needed
        on XLA:CPU for XLA convolutions, not for ``conv="im2col"``).
      loss0: what ``LocalResult.loss0`` (F_k) is: ``"shard"`` (default): the
        mean loss of the initial params over all valid rows (:func:`shard_loss`,
        one extra forward pass over the shard, as the CUP study's clients
        compute it); ``"first_batch"``: the loss of the first mini-batch (free,
        a noisy estimate; for runs where nothing reads F_k).
      loss0_chunk: rows per forward pass of the ``"shard"`` loss.

    Returns:
      A pure function, jittable and vmappable over (shard, steps, key).
    """
    if batch_size < 1 or max_steps < 1:
        raise ValueError(f"batch_size={batch_size}, max_steps={max_steps}: expected >= 1")
    if mu < 0:
        raise ValueError(f"mu={mu}: expected a non-negative FedProx weight")
    if loss0 not in LOSS0:
        raise ValueError(f"loss0={loss0!r}: expected one of {LOSS0}")
    if loss0_chunk < 1:
        raise ValueError(f"loss0_chunk={loss0_chunk}: expected >= 1")

    def batch_loss(params, global_params, x, y):
        logits = apply_fn(params, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        if mu > 0:
            sq = sum(jnp.sum(jnp.square(a - b)) for a, b in zip(
                jax.tree.leaves(params), jax.tree.leaves(global_params)))
            return loss + 0.5 * mu * sq, loss
        return loss, loss

    grad_fn = jax.value_and_grad(batch_loss, has_aux=True)

    def local_train(params, shard: Shard, steps, key) -> LocalResult:
        n_max = shard.y.shape[0]
        steps = jnp.where(shard.n > 0, jnp.minimum(steps, max_steps), 0).astype(jnp.int32)

        def do_step(carry, s):
            p, opt_state, loss_sum, first = carry
            rows = batch_rows(key, shard.n, n_max, s, batch_size)
            (_, loss), grads = grad_fn(p, params, shard.x[rows], shard.y[rows])
            updates, opt_state = optimizer.update(grads, opt_state, p)
            p = optax.apply_updates(p, updates)
            if loss0 == "first_batch":
                first = jnp.where(s == 0, loss, first)
            return p, opt_state, loss_sum + loss, first

        def step(carry, s):
            return jax.lax.cond(s < steps, do_step, lambda c, _: c, carry, s), None

        init = (params, optimizer.init(params), jnp.float32(0.0), jnp.float32(0.0))
        if unroll is False or (unroll is not True and unroll == 1):
            # A loop of exactly `steps` iterations. The scan below skips steps
            # with a lax.cond whose pass-through branch made XLA:CPU copy the
            # params every step (2-5% of a client's time on CPU; bench/README.md).
            trained, _, loss_sum, first = jax.lax.fori_loop(
                0, steps, lambda s, carry: do_step(carry, s), init)
        else:  # unrolling needs a static trip count
            (trained, _, loss_sum, first), _ = jax.lax.scan(
                step, init, jnp.arange(max_steps), unroll=unroll)
        delta = jax.tree.map(jnp.subtract, trained, params)
        mean_loss = loss_sum / jnp.maximum(steps, 1)
        f_k = first if loss0 == "first_batch" else shard_loss(apply_fn, params, shard,
                                                                loss0_chunk)
        return LocalResult(delta, mean_loss, f_k, steps)

    return local_train
