import jax
import jax.numpy as jnp
import numpy as np
import optax

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
