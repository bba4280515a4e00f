"""Evaluation of the global model: per client, per class and on the test set.

All clients' test splits are flattened into one stream of examples, run
through the model in fixed-size chunks (``lax.map``, so memory stays bounded
and shapes stay fixed), and reduced back per client and per class.

With ``eval.clients: M`` the round evaluates only ``M`` clients drawn at
random plus its selected clients (:func:`sample_clients`) and keeps every
other client's last values (:func:`merge`): per-client accuracy and loss are
then partly stale, and the fairness metrics computed from them, the mean
accuracy and the per-class loss (over the evaluated clients' rows only) are
*estimates*. ``eval.full_every`` evaluates every client periodically.

Example:
  >>> evaluate = make_evaluator(model.apply, num_classes=10)  # doctest: +SKIP
  >>> ev = evaluate(params, x_test, y_test, n_test)           # doctest: +SKIP
  >>> ev.accuracy.shape                                       # doctest: +SKIP
  (100,)
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


class Evaluation(NamedTuple):
    accuracy: jax.Array    # f32[C]  accuracy on each client's test split (0 if empty)
    loss: jax.Array        # f32[C]  mean cross-entropy on each client's test split
    class_loss: jax.Array   # f32[L]  mean loss per true class over all test rows (NaN: no rows)
    class_count: jax.Array  # f32[L] test rows of each class


def make_evaluator(apply_fn: Callable, num_classes: int, chunk: int = 500) -> Callable:
    """Builds ``evaluate(params, x, y, n) -> Evaluation`` over padded client test splits.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits``.
      num_classes: number of classes L.
      chunk: examples per forward pass.

    Returns:
      A pure, jittable function of params, x u8[C, M, ...], y i32[C, M], n i32[C].
    """

    def evaluate(params, x, y, n) -> Evaluation:
        c, m = y.shape
        total = c * m
        size = min(chunk, total)
        pad = -total % size
        xf = jnp.concatenate([x.reshape(total, *x.shape[2:]),
                              jnp.zeros((pad, *x.shape[2:]), x.dtype)])
        yf = jnp.concatenate([y.reshape(total), jnp.zeros((pad,), y.dtype)])

        def forward(batch):
            xb, yb = batch
            logits = apply_fn(params, xb)
            return (optax.softmax_cross_entropy_with_integer_labels(logits, yb),
                    (jnp.argmax(logits, -1) == yb).astype(jnp.float32))

        losses, correct = jax.lax.map(
            forward, (xf.reshape(-1, size, *xf.shape[1:]), yf.reshape(-1, size)))
        losses = losses.reshape(-1)[:total].reshape(c, m)
        correct = correct.reshape(-1)[:total].reshape(c, m)
        mask = (jnp.arange(m)[None, :] < n[:, None]).astype(jnp.float32)
        count = jnp.maximum(n, 1).astype(jnp.float32)
        acc = jnp.sum(correct * mask, 1) / count
        loss = jnp.sum(losses * mask, 1) / count
        class_sum = jax.ops.segment_sum((losses * mask).reshape(-1), y.reshape(-1), num_classes)
        class_count = jax.ops.segment_sum(mask.reshape(-1), y.reshape(-1), num_classes)
        class_loss = jnp.where(class_count > 0, class_sum / jnp.maximum(class_count, 1.0),
                               jnp.nan)
        return Evaluation(acc, loss, class_loss, class_count)

    return evaluate


def sample_clients(key: jax.Array, num_clients: int, m: int, selected: jax.Array) -> jax.Array:
    """i32[K + m]: the round's selected clients, then ``m`` drawn uniformly with replacement.

    O(K + m) whatever the population; a client may appear twice (evaluated twice,
    the same values).

    Example:
      >>> ids = sample_clients(jax.random.key(0), 10**6, 4, jnp.array([7, 3]))
      >>> ids.shape, ids[:2].tolist()
      ((6,), [7, 3])
    """
    drawn = jax.random.randint(key, (m,), 0, num_clients, jnp.int32)
    return jnp.concatenate([jnp.asarray(selected, jnp.int32), drawn])


def merge(accuracy: jax.Array, loss: jax.Array, ids: jax.Array, ev: Evaluation) -> Evaluation:
    """Writes an evaluation of clients ``ids`` into the last per-client values.

    Args:
      accuracy, loss: f32[C] last values of every client.
      ids: i32[k] evaluated clients (``ev``'s rows).
      ev: :class:`Evaluation` of those k clients.

    Returns:
      :class:`Evaluation` over all C clients (class loss and counts: ``ev``'s,
      an estimate from the evaluated clients).

    Example:
      >>> ev = Evaluation(jnp.array([0.5, 1.0]), jnp.array([2.0, 1.0]), jnp.zeros(1), jnp.ones(1))
      >>> merge(jnp.zeros(3), jnp.zeros(3), jnp.array([2, 0]), ev).accuracy.tolist()
      [1.0, 0.0, 0.5]
    """
    return Evaluation(accuracy.at[ids].set(ev.accuracy), loss.at[ids].set(ev.loss),
                      ev.class_loss, ev.class_count)
