"""fsjax.local: F_k (LocalResult.loss0) is the global model's mean loss over the client's rows."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fsjax import aggregation, engine, local, models


def _setup(k=4, n_max=23, shape=(6, 6, 3)):
    model = models.build("mlp", 10, hidden=(16,))
    params = models.init_params(model, jax.random.key(0), shape)
    rng = np.random.default_rng(0)
    shards = local.Shard(jnp.asarray(rng.integers(0, 256, (k, n_max, *shape)), jnp.uint8),
                         jnp.asarray(rng.integers(0, 10, (k, n_max)), jnp.int32),
                         jnp.asarray([n_max, 7, 0, 15][:k], jnp.int32))
    steps = jnp.asarray([3, 0, 2, 1][:k], jnp.int32)
    keys = jax.random.split(jax.random.key(1), k)
    return model, params, shards, steps, keys


def _direct(model, params, shards):
    """Mean cross-entropy of the initial params over each client's valid rows, in float64."""
    out = []
    for c in range(shards.y.shape[0]):
        n = int(shards.n[c])
        if n == 0:
            out.append(0.0)
            continue
        logits = np.asarray(model.apply(params, shards.x[c, :n]), np.float64)
        y = np.asarray(shards.y[c, :n])
        lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        out.append(float(np.mean(lse - logits[np.arange(n), y])))
    return np.array(out)


@pytest.mark.parametrize("unroll", [1, True])
@pytest.mark.parametrize("chunk", [256, 5])       # one pass; 5 rows a pass (23 = 4 x 5 + 3)
def test_loss0_is_the_mean_loss_over_all_valid_rows(unroll, chunk):
    model, params, shards, steps, keys = _setup()
    train = local.make_local_train(model.apply, optax.sgd(0.1), batch_size=4, max_steps=3,
                                   unroll=unroll, loss0_chunk=chunk)
    want = _direct(model, params, shards)
    out = jax.jit(jax.vmap(train, in_axes=(None, 0, 0, 0)))(params, shards, steps, keys)
    np.testing.assert_allclose(out.loss0, want, rtol=1e-5)
    # Not the first mini-batch's loss (the old F_k): a client with 3 steps of 4 of its 23 rows.
    first = local.make_local_train(model.apply, optax.sgd(0.1), batch_size=4, max_steps=3,
                                   unroll=unroll, loss0="first_batch")
    old = jax.jit(jax.vmap(first, in_axes=(None, 0, 0, 0)))(params, shards, steps, keys)
    assert abs(float(old.loss0[0]) - want[0]) > 1e-3
    # F_k does not depend on training: a client given 0 steps still reports it.
    assert out.steps[1] == 0 and out.loss0[1] == pytest.approx(want[1], rel=1e-5)
    assert out.loss0[2] == 0.0                         # no rows
    for c in range(4):                                 # one client at a time = the vmapped result
        one = jax.jit(train)(params, jax.tree.map(lambda a: a[c], shards), steps[c], keys[c])
        np.testing.assert_allclose(one.loss0, out.loss0[c], rtol=1e-6)
        np.testing.assert_allclose(one.loss, out.loss[c], rtol=1e-6)


def test_first_batch_option_is_the_first_step_loss():
    model, params, shards, steps, keys = _setup(k=1)
    train = local.make_local_train(model.apply, optax.sgd(0.1), batch_size=4, max_steps=3,
                                   loss0="first_batch")
    shard = jax.tree.map(lambda a: a[0], shards)
    out = train(params, shard, steps[0], keys[0])
    rows = local.batch_rows(keys[0], shard.n, shard.y.shape[0], 0, 4)
    want = optax.softmax_cross_entropy_with_integer_labels(
        model.apply(params, shard.x[rows]), shard.y[rows]).mean()
    np.testing.assert_allclose(out.loss0, want, rtol=1e-6)


def test_engine_modes_and_fused_reduce_carry_the_shard_loss():
    model, params, shards, steps, keys = _setup()
    train = local.make_local_train(model.apply, optax.sgd(0.1), batch_size=4, max_steps=3)
    want = _direct(model, params, shards)
    for mode, chunk in (("loop", None), ("vmap", None), ("chunked", 1), ("chunked", 3)):
        run = lambda *a, mode=mode, chunk=chunk: engine.train_clients(train, *a, mode=mode,
                                                                      chunk_size=chunk)
        out = run(params, shards, steps, keys) if mode == "loop" else jax.jit(run)(
            params, shards, steps, keys)
        np.testing.assert_allclose(out.loss0, want, rtol=1e-5, err_msg=mode)
    agg = aggregation.make("qffl", q=1.0, lipschitz=1.0)
    weights = jnp.asarray([1.0, 2.0, 0.0, 1.0])
    _, _, stats = jax.jit(lambda *a: engine.train_and_reduce(
        train, *a, lambda i, r: weights[i], agg.client_terms, chunk_size=3))(
            params, shards, steps, keys)
    np.testing.assert_allclose(stats.loss0, want, rtol=1e-5)


def test_bad_loss0_arguments_name_the_field():
    with pytest.raises(ValueError, match="loss0="):
        local.make_local_train(lambda p, x: x, optax.sgd(0.1), batch_size=2, max_steps=1,
                               loss0="last")
    with pytest.raises(ValueError, match="loss0_chunk"):
        local.make_local_train(lambda p, x: x, optax.sgd(0.1), batch_size=2, max_steps=1,
                               loss0_chunk=0)
