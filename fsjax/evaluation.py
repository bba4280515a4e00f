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

From per-class counts (REFERENCE.md B.1 step 7): :func:`make_class_counter`
runs the global model once over the global test set and returns per-class
correct counts, totals and loss sums (:class:`ClassCounts`);
:func:`from_class_counts` turns them and the clients' label histograms into
every client's accuracy and loss in O(C x L) (``eval.client_accuracy``:
``labels`` = per-class accuracy weighted by the client's label proportions,
``label_set`` = the CUP study's ``sum correct / sum total`` over the labels
the client holds), plus the global test accuracy from the same pass.

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


class ClassCounts(NamedTuple):
    correct: jax.Array   # f32[L] correctly classified test rows of each true class
    total: jax.Array     # f32[L] test rows of each true class
    loss_sum: jax.Array  # f32[L] summed cross-entropy over the rows of each true class


CLIENT_ACCURACY = ("held_out", "labels", "label_set")


def _per_example(apply_fn: Callable, params, x, y, chunk: int):
    """(f32[C, M] losses, f32[C, M] correct) of every row of x u8[C, M, ...], y i32[C, M].

    Rows are flattened and run in ``lax.map`` chunks of ``chunk`` (fixed shapes).
    """
    c, m = y.shape
    total = c * m
    size = max(1, min(chunk, total))
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
    return (losses.reshape(-1)[:total].reshape(c, m),
            correct.reshape(-1)[:total].reshape(c, m))


def make_class_counter(apply_fn: Callable, num_classes: int, chunk: int = 500) -> Callable:
    """Builds ``count(params, x, y, n) -> ClassCounts``: one pass over a test set.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits``.
      num_classes: number of classes L.
      chunk: examples per forward pass.

    Returns:
      A pure, jittable function of params, x u8[G, M, ...], y i32[G, M], n i32[G]
      (the layout of :func:`fsjax.clients.global_test_set`: G = 1; rows past
      ``n[g]`` are padding and not counted).

    Example:
      >>> apply = lambda p, x: jax.nn.one_hot(x[:, 0], 3)    # predicts x[:, 0]
      >>> x = jnp.array([[[0], [1], [2], [0]]]); y = jnp.array([[0, 2, 2, 1]])
      >>> cc = make_class_counter(apply, 3)(None, x, y, jnp.array([4]))
      >>> cc.correct.tolist(), cc.total.tolist()
      ([1.0, 0.0, 1.0], [1.0, 1.0, 2.0])
    """

    def count(params, x, y, n) -> ClassCounts:
        losses, correct = _per_example(apply_fn, params, x, y, chunk)
        mask = (jnp.arange(y.shape[1])[None, :] < n[:, None]).astype(jnp.float32)
        seg = lambda v: jax.ops.segment_sum((v * mask).reshape(-1), y.reshape(-1), num_classes)
        return ClassCounts(seg(correct), seg(jnp.ones_like(mask)), seg(losses))

    return count


def global_accuracy(counts: ClassCounts) -> jax.Array:
    """f32[]: accuracy over every counted test row (0 if none)."""
    total = jnp.sum(counts.total)
    return jnp.where(total > 0, jnp.sum(counts.correct) / jnp.maximum(total, 1.0), 0.0)


def from_class_counts(counts: ClassCounts, label_hist: jax.Array,
                      mode: str = "label_set") -> tuple[Evaluation, jax.Array]:
    """Every client's accuracy and loss from per-class test counts, O(C x L).

    ``label_set`` (the CUP study's formula): with ``S_k = {l : label_hist[k, l] > 0}``,
    ``acc_k = sum_{l in S_k} correct_l / sum_{l in S_k} total_l`` and
    ``loss_k = sum_{l in S_k} loss_sum_l / sum_{l in S_k} total_l``.

    ``labels``: per-class accuracy ``correct_l / total_l`` (and mean loss)
    averaged with the client's label proportions ``p_kl = label_hist[k, l] /
    sum_l label_hist[k, l]``, over the classes present in the test set
    (weights renormalised over ``total_l > 0``).

    A client whose labels have no test row gets accuracy 0 and loss 0 (the
    held-out evaluator's convention for an empty split).

    Args:
      counts: :class:`ClassCounts` of the global model on the test set.
      label_hist: f32[C, L] training label counts per client
        (:attr:`fsjax.clients.FederatedData.label_hist`).
      mode: ``"labels"`` or ``"label_set"`` (static).

    Returns:
      ``(Evaluation, accuracy_global)``: per-client accuracy/loss f32[C], the
      per-class mean loss f32[L] (NaN for a class with no test row) and test
      rows f32[L]; the global test accuracy f32[] from the same counts.

    Example:
      >>> cc = ClassCounts(jnp.array([8.0, 1.0, 3.0]), jnp.array([10.0, 10.0, 5.0]),
      ...                  jnp.array([2.0, 20.0, 5.0]))
      >>> hist = jnp.array([[30.0, 10.0, 0.0], [0.0, 0.0, 4.0]])
      >>> ev, acc = from_class_counts(cc, hist, "label_set")
      >>> [round(float(a), 4) for a in ev.accuracy], round(float(acc), 4)   # 9/20, 3/5; 12/25
      ([0.45, 0.6], 0.48)
      >>> [round(float(a), 4) for a in from_class_counts(cc, hist, "labels")[0].accuracy]
      [0.625, 0.6]
    """
    if mode not in ("labels", "label_set"):
        raise ValueError(f"mode={mode!r}: expected 'labels' or 'label_set' "
                         "(held_out uses make_evaluator)")
    correct, total, loss_sum = (jnp.asarray(a, jnp.float32) for a in counts)
    hist = jnp.asarray(label_hist, jnp.float32)
    present = total > 0
    class_acc = jnp.where(present, correct / jnp.maximum(total, 1.0), 0.0)
    class_loss = jnp.where(present, loss_sum / jnp.maximum(total, 1.0), jnp.nan)
    # Elementwise products and row sums, not matmuls: exact counts on every
    # backend (GPU matmuls may round f32 inputs to TF32).
    if mode == "label_set":
        held = (hist > 0).astype(jnp.float32)
        denom = jnp.sum(held * total, 1)
        acc = jnp.sum(held * correct, 1) / jnp.maximum(denom, 1.0)
        loss = jnp.sum(held * loss_sum, 1) / jnp.maximum(denom, 1.0)
    else:
        w = jnp.where(present, jnp.maximum(hist, 0.0), 0.0)
        denom = jnp.sum(w, 1)
        acc = jnp.sum(w * class_acc, 1) / jnp.maximum(denom, 1e-30)
        loss = jnp.sum(w * jnp.where(present, class_loss, 0.0), 1) / jnp.maximum(denom, 1e-30)
    empty = denom <= 0
    ev = Evaluation(jnp.where(empty, 0.0, acc), jnp.where(empty, 0.0, loss), class_loss, total)
    return ev, global_accuracy(ClassCounts(correct, total, loss_sum))


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
        losses, correct = _per_example(apply_fn, params, x, y, chunk)
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
