"""Evaluation of the global model: per client, per class and on the test set.

All clients' test splits are flattened into one stream of examples, run
through the model in fixed-size chunks (``lax.map``, so memory stays bounded
and shapes stay fixed), and reduced back per client and per class.

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
