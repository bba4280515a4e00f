"""Local training and the client engine: every mode equals the plain loop."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fsjax import engine, local, models


def _setup(name, k=4, n=24, shape=(32, 32, 3), max_steps=3, mu=0.0):
    model = models.build(name, 10, **({"hidden": (32,)} if name == "mlp" else {}))
    params = models.init_params(model, jax.random.key(0), shape)
    rng = np.random.default_rng(0)
    shards = local.Shard(jnp.asarray(rng.integers(0, 256, (k, n, *shape)), jnp.uint8),
                         jnp.asarray(rng.integers(0, 10, (k, n)), jnp.int32),
                         jnp.asarray(rng.integers(n // 2, n + 1, k), jnp.int32))
    steps = jnp.asarray([max_steps, 1, 0, 2][:k] + [max_steps] * (k - 4), jnp.int32)
    keys = jax.random.split(jax.random.key(1), k)
    train = local.make_local_train(model.apply, optax.sgd(0.05, momentum=0.9), batch_size=8,
                                   max_steps=max_steps, mu=mu)
    return train, params, shards, steps, keys


def _max_diff(a, b):
    return max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("name, shape", [("mlp", (8, 8, 3)), ("cnn", (32, 32, 3))])
def test_modes_equal_loop(name, shape):
    train, params, shards, steps, keys = _setup(name, shape=shape)
    ref = engine.train_clients(train, params, shards, steps, keys, mode="loop")
    for mode, chunk in (("vmap", None), ("chunked", 1), ("chunked", 3), ("auto", None)):
        out = jax.jit(lambda *a, mode=mode, chunk=chunk: engine.train_clients(
            train, *a, mode=mode, chunk_size=chunk))(params, shards, steps, keys)
        assert _max_diff(out.delta, ref.delta) < 1e-5, (mode, chunk)
        np.testing.assert_allclose(out.loss, ref.loss, atol=1e-5)
        np.testing.assert_array_equal(out.steps, ref.steps)
    np.testing.assert_array_equal(ref.steps, steps)
    # A client given 0 steps returns a zero update.
    assert all(float(jnp.abs(d[2]).max()) == 0 for d in jax.tree.leaves(ref.delta))


@pytest.mark.parametrize("agg_name", ["fedavg", "qffl"])
def test_train_and_reduce_equals_stacked_training_then_apply(agg_name):
    from fsjax import aggregation
    train, params, shards, steps, keys = _setup("mlp", k=5, shape=(8, 8, 3))
    agg = aggregation.make(agg_name, **({"q": 1.5, "lipschitz": 5.0} if agg_name == "qffl" else {}))
    weights = jnp.asarray([3.0, 0.0, 2.0, 5.0, 1.0])
    ref = engine.train_clients(train, params, shards, steps, keys, mode="loop")
    want, _ = agg.apply(agg.init(params), params, ref.delta, weights, ref.loss0)
    weigh = lambda i, res: weights[i]
    for chunk in (1, 2, 5):      # 2 pads 5 slots to 6 with a weightless copy
        sums, h, stats = jax.jit(lambda *a, chunk=chunk: engine.train_and_reduce(
            train, *a, weigh, agg.client_terms, chunk_size=chunk))(params, shards, steps, keys)
        got, _ = agg.finish(agg.init(params), params, sums, h)
        assert _max_diff(got, want) < 1e-5, chunk
        np.testing.assert_allclose(stats.loss, ref.loss, atol=1e-5)
        np.testing.assert_array_equal(stats.steps, ref.steps)
        np.testing.assert_array_equal(stats.weight, weights)
        assert stats.finite.all()


def test_loop_equals_one_client_by_hand():
    """The loop reference against a hand-written SGD loop over the same batches."""
    train, params, shards, steps, keys = _setup("mlp", k=1, shape=(4, 4, 1), max_steps=3)
    model = models.build("mlp", 10, hidden=(32,))
    sgd = local.make_local_train(model.apply, optax.sgd(0.05), batch_size=8, max_steps=3)
    out = sgd(params, jax.tree.map(lambda a: a[0], shards), jnp.int32(3), keys[0])
    p = params
    for s in range(3):
        rows = local.batch_rows(keys[0], shards.n[0], shards.y.shape[1], s, 8)
        g = jax.grad(lambda q: optax.softmax_cross_entropy_with_integer_labels(
            model.apply(q, shards.x[0][rows]), shards.y[0][rows]).mean())(p)
        p = jax.tree.map(lambda a, b: a - 0.05 * b, p, g)
    assert _max_diff(out.delta, jax.tree.map(jnp.subtract, p, params)) < 1e-6


def test_batches_cover_an_epoch_without_repeats():
    key = jax.random.key(3)
    rows = jnp.concatenate([local.batch_rows(key, jnp.int32(20), 32, s, 5) for s in range(4)])
    assert sorted(rows.tolist()) == list(range(20))
    nxt = jnp.concatenate([local.batch_rows(key, jnp.int32(20), 32, s, 5) for s in range(4, 8)])
    assert sorted(nxt.tolist()) == list(range(20)) and not np.array_equal(rows, nxt)


def test_fedprox_term_pulls_towards_global():
    train0, params, shards, steps, keys = _setup("mlp", shape=(8, 8, 3), mu=0.0)
    train1 = _setup("mlp", shape=(8, 8, 3), mu=10.0)[0]
    d0 = engine.train_clients(train0, params, shards, steps, keys, mode="loop").delta
    d1 = engine.train_clients(train1, params, shards, steps, keys, mode="loop").delta
    norm = lambda d: sum(float(jnp.sum(x[0] ** 2)) for x in jax.tree.leaves(d))
    assert norm(d1) < norm(d0)


def test_finite_updates_flags_nan():
    res = local.LocalResult({"w": jnp.array([[1.0, 2.0], [jnp.nan, 0.0], [0.0, 0.0]])},
                            jnp.array([0.1, 0.2, jnp.inf]), jnp.zeros(3), jnp.ones(3, jnp.int32))
    np.testing.assert_array_equal(engine.finite_updates(res), [True, False, False])


def test_resolve_mode():
    assert engine.resolve_mode("auto", backend="cpu") == ("chunked", 1)
    assert engine.resolve_mode("auto", backend="gpu") == ("vmap", None)
    assert engine.resolve_mode("chunked", 4) == ("chunked", 4)
    with pytest.raises(ValueError, match="mode"):
        engine.resolve_mode("parallel")
    with pytest.raises(ValueError, match="chunk_size"):
        engine.resolve_mode("chunked", -1)


SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from tests.test_engine import _setup, _max_diff
    from fsjax import engine
    assert jax.device_count() == 4, jax.devices()
    train, params, shards, steps, keys = _setup("mlp", k=8, shape=(8, 8, 3))
    mesh = engine.client_mesh()
    for mode in ("vmap", "chunked"):
        one = jax.jit(lambda *a: engine.train_clients(train, *a, mode=mode))(params, shards, steps, keys)
        four = jax.jit(lambda *a: engine.train_clients(train, *a, mode=mode, mesh=mesh))(
            params, shards, steps, keys)
        assert len(four.loss.sharding.device_set) == 4, four.loss.sharding
        assert _max_diff(one.delta, four.delta) < 1e-6, mode
        assert _max_diff(one.loss, four.loss) < 1e-6, mode
    from fsjax import aggregation
    agg = aggregation.fedavg()
    w = jnp.arange(1.0, 9.0)
    for chunk in (1, 2):
        one = jax.jit(lambda *a: engine.train_and_reduce(
            train, *a, lambda i, r: w[i], agg.client_terms, chunk_size=chunk))(
            params, shards, steps, keys)
        four = jax.jit(lambda *a: engine.train_and_reduce(
            train, *a, lambda i, r: w[i], agg.client_terms, chunk_size=chunk, mesh=mesh))(
            params, shards, steps, keys)
        assert _max_diff(one[0], four[0]) < 1e-5 and abs(float(one[1] - four[1])) < 1e-4
        np.testing.assert_array_equal(one[2].weight, four[2].weight)
    from fsjax import config, simulation
    hists = []
    for shard in (False, True):
        cfg = config.load("experiments/quick.yaml", overrides=(
            "rounds=2", "selection.clients_per_round=6", f"engine.shard={shard}"))
        sim = simulation.Simulation(cfg)
        assert (sim.mesh is not None) == shard and sim.padded_slots == (8 if shard else 6)
        hists.append(simulation.run(cfg, sim=sim).metrics["accuracy_mean"])
    np.testing.assert_allclose(hists[0], hists[1], atol=1e-6)
    print("SHARDED-OK")
""")


@pytest.mark.processes
def test_sharded_over_four_cpu_devices_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", SHARDED], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert "SHARDED-OK" in out.stdout, out.stdout + out.stderr
