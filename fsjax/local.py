"""Local training for ONE client, written once; the engine maps it over clients.

A client holds a padded shard (``x[N_max]``, ``y[N_max]``, ``n`` valid rows).
Mini-batches are drawn inside the compiled code: every epoch is a fresh random
permutation of the valid rows, and step ``s`` takes the ``batch_size`` rows at
positions ``s*B .. s*B+B-1`` of the concatenated epochs, so ``max_steps *
batch_size <= n`` visits each example at most once. The number of steps is
data (``steps <= max_steps``): the step loop runs ``steps`` times (under
``vmap``, to the largest count with finished clients masked), so per-client
step counts never recompile.

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
    loss0: jax.Array   # f32[]  loss of the initial params on the first batch (q-FFL's F_k)
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


def make_local_train(apply_fn: Callable, optimizer: optax.GradientTransformation, *,
                     batch_size: int, max_steps: int, mu: float = 0.0,
                     unroll: int | bool = 1) -> Callable:
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

    Returns:
      A pure function, jittable and vmappable over (shard, steps, key).
    """
    if batch_size < 1 or max_steps < 1:
        raise ValueError(f"batch_size={batch_size}, max_steps={max_steps}: expected >= 1")
    if mu < 0:
        raise ValueError(f"mu={mu}: expected a non-negative FedProx weight")

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
            p, opt_state, loss_sum, loss0 = carry
            rows = batch_rows(key, shard.n, n_max, s, batch_size)
            (_, loss), grads = grad_fn(p, params, shard.x[rows], shard.y[rows])
            updates, opt_state = optimizer.update(grads, opt_state, p)
            p = optax.apply_updates(p, updates)
            loss0 = jnp.where(s == 0, loss, loss0)
            return p, opt_state, loss_sum + loss, loss0

        def step(carry, s):
            return jax.lax.cond(s < steps, do_step, lambda c, _: c, carry, s), None

        init = (params, optimizer.init(params), jnp.float32(0.0), jnp.float32(0.0))
        if unroll is False or (unroll is not True and unroll == 1):
            # A loop of exactly `steps` iterations. The scan below skips steps
            # with a lax.cond whose pass-through branch made XLA:CPU copy the
            # params every step (2-5% of a client's time on CPU; bench/README.md).
            trained, _, loss_sum, loss0 = jax.lax.fori_loop(
                0, steps, lambda s, carry: do_step(carry, s), init)
        else:  # unrolling needs a static trip count
            (trained, _, loss_sum, loss0), _ = jax.lax.scan(
                step, init, jnp.arange(max_steps), unroll=unroll)
        delta = jax.tree.map(jnp.subtract, trained, params)
        mean_loss = loss_sum / jnp.maximum(steps, 1)
        return LocalResult(delta, mean_loss, loss0, steps)

    return local_train
