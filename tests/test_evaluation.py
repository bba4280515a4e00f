import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fsjax import evaluation, models


def test_per_client_and_per_class_match_a_direct_loop():
    model = models.build("mlp", 4, hidden=(8,))
    params = models.init_params(model, jax.random.key(0), (3, 3, 1))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (5, 7, 3, 3, 1)), jnp.uint8)
    y = jnp.asarray(rng.integers(0, 3, (5, 7)), jnp.int32)      # class 3 never appears
    n = jnp.asarray([7, 3, 1, 5, 2], jnp.int32)
    ev = evaluation.make_evaluator(model.apply, 4, chunk=4)(params, x, y, n)
    losses, hits, by_class = [], [], {c: [] for c in range(4)}

    @jax.jit   # one compilation per client size instead of one per eager op
    def forward(xc, yc):
        logits = model.apply(params, xc)
        return logits, optax.softmax_cross_entropy_with_integer_labels(logits, yc)

    for c in range(5):
        logits, loss = forward(x[c, :n[c]], y[c, :n[c]])
        losses.append(float(loss.mean()))
        hits.append(float((logits.argmax(-1) == y[c, :n[c]]).mean()))
        for lab, v in zip(np.asarray(y[c, :n[c]]), np.asarray(loss)):
            by_class[int(lab)].append(float(v))
    np.testing.assert_allclose(ev.loss, losses, rtol=1e-5)
    np.testing.assert_allclose(ev.accuracy, hits, rtol=1e-6)
    np.testing.assert_allclose(ev.class_loss[:3], [np.mean(by_class[k]) for k in range(3)],
                               rtol=1e-5)
    assert np.isnan(ev.class_loss[3]) and ev.class_count[3] == 0
    np.testing.assert_array_equal(ev.class_count[:3],
                                  [len(by_class[k]) for k in range(3)])


# ------------------------------------------- per-class counts (REFERENCE B.1 step 7)

def _model_and_test_set(groups=2, m=9, classes=4):
    model = models.build("mlp", classes, hidden=(8,))
    params = models.init_params(model, jax.random.key(1), (3, 3, 1))
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.integers(0, 256, (groups, m, 3, 3, 1)), jnp.uint8)
    y = jnp.asarray(rng.integers(0, classes, (groups, m)), jnp.int32)
    return model, params, x, y


def test_class_counts_match_a_numpy_loop():
    model, params, x, y = _model_and_test_set()
    n = jnp.asarray([9, 5], jnp.int32)                     # group 1 has 4 padding rows
    cc = jax.jit(evaluation.make_class_counter(model.apply, 4, chunk=4))(params, x, y, n)
    correct, total, loss_sum = np.zeros(4), np.zeros(4), np.zeros(4)
    for g in range(2):
        logits = np.asarray(model.apply(params, x[g, :n[g]]), np.float64)
        for row, lab in zip(logits, np.asarray(y[g, :n[g]])):
            total[lab] += 1
            correct[lab] += row.argmax() == lab
            loss_sum[lab] += np.log(np.exp(row - row.max()).sum()) + row.max() - row[lab]
    np.testing.assert_array_equal(cc.total, total)
    np.testing.assert_array_equal(cc.correct, correct)
    np.testing.assert_allclose(cc.loss_sum, loss_sum, rtol=1e-5)
    np.testing.assert_allclose(evaluation.global_accuracy(cc), correct.sum() / total.sum(),
                               rtol=1e-7)


def _reference(correct, total, loss_sum, hist, mode):
    """Per client, a plain loop over classes."""
    acc, loss = [], []
    for h in hist:
        if mode == "label_set":
            s = [l for l in range(len(h)) if h[l] > 0]
            d = sum(total[l] for l in s)
            acc.append(sum(correct[l] for l in s) / d if d else 0.0)
            loss.append(sum(loss_sum[l] for l in s) / d if d else 0.0)
        else:
            s = [l for l in range(len(h)) if h[l] > 0 and total[l] > 0]
            w = sum(h[l] for l in s)
            acc.append(sum(h[l] * correct[l] / total[l] for l in s) / w if w else 0.0)
            loss.append(sum(h[l] * loss_sum[l] / total[l] for l in s) / w if w else 0.0)
    return np.array(acc), np.array(loss)


@pytest.mark.parametrize("mode", ["labels", "label_set"])
def test_client_accuracy_from_class_counts_matches_a_loop(mode):
    rng = np.random.default_rng(0)
    total = np.array([10.0, 0.0, 7.0, 3.0, 12.0])          # class 1 has no test row
    correct = np.floor(total * rng.random(5))
    loss_sum = total * rng.random(5) * 3
    hist = rng.integers(0, 20, (6, 5)).astype(np.float32) * (rng.random((6, 5)) < 0.5)
    hist[4] = [0, 9, 0, 0, 0]                               # only a label absent from test
    hist[5] = 0                                             # no label at all
    cc = evaluation.ClassCounts(*(jnp.asarray(a, jnp.float32) for a in (correct, total, loss_sum)))
    ev, acc_global = jax.jit(evaluation.from_class_counts, static_argnames="mode")(
        cc, jnp.asarray(hist), mode=mode)
    want_acc, want_loss = _reference(correct, total, loss_sum, hist, mode)
    np.testing.assert_allclose(ev.accuracy, want_acc, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ev.loss, want_loss, rtol=1e-6, atol=1e-7)
    assert ev.accuracy[4] == 0 and ev.accuracy[5] == 0
    np.testing.assert_array_equal(ev.class_count, total)
    assert np.isnan(ev.class_loss[1])
    np.testing.assert_allclose(np.delete(np.asarray(ev.class_loss), 1),
                               np.delete(loss_sum / np.maximum(total, 1), 1), rtol=1e-6)
    np.testing.assert_allclose(acc_global, correct.sum() / total.sum(), rtol=1e-6)


def test_label_set_equals_accuracy_on_the_clients_test_rows():
    """The study's formula = plain accuracy over the test rows of the client's labels."""
    model, params, x, y = _model_and_test_set(groups=1, m=40)
    n = jnp.asarray([40], jnp.int32)
    cc = evaluation.make_class_counter(model.apply, 4)(params, x, y, n)
    hist = jnp.asarray([[5.0, 0, 1, 0], [0, 0, 0, 2], [1, 1, 1, 1]])
    ev, acc_global = evaluation.from_class_counts(cc, hist, "label_set")
    logits = model.apply(params, x[0])
    hit = np.asarray(logits.argmax(-1) == y[0])
    loss = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, y[0]))
    for k, labs in enumerate(([0, 2], [3], [0, 1, 2, 3])):
        rows = np.isin(np.asarray(y[0]), labs)
        np.testing.assert_allclose(ev.accuracy[k], hit[rows].mean(), rtol=1e-6)
        np.testing.assert_allclose(ev.loss[k], loss[rows].mean(), rtol=1e-5)
    np.testing.assert_allclose(ev.accuracy[2], acc_global, rtol=1e-6)
    # Same pass, per-class and global views agree with the held-out evaluator on one "client".
    held = evaluation.make_evaluator(model.apply, 4)(params, x, y, n)
    np.testing.assert_allclose(acc_global, held.accuracy[0], rtol=1e-6)
    np.testing.assert_allclose(ev.class_loss, held.class_loss, rtol=1e-5)


def test_from_class_counts_rejects_held_out():
    cc = evaluation.ClassCounts(jnp.ones(2), jnp.ones(2), jnp.ones(2))
    with pytest.raises(ValueError, match="mode"):
        evaluation.from_class_counts(cc, jnp.ones((3, 2)), "held_out")
