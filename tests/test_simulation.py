import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fsjax import backends, config, data, local, metrics, models, simulation
from tests.compile_count import count_compilations

QUICK = "experiments/quick.yaml"


def test_quick_learns_and_modes_agree():
    hists = {}
    for mode in ("vmap", "chunked", "loop"):
        cfg = config.load(QUICK, overrides=(f"engine.mode={mode}",))
        hists[mode] = simulation.run(cfg)
    acc = hists["vmap"].metrics["accuracy_mean"]
    assert acc[-1] > 0.4 and acc[-1] > acc[0], acc                 # chance is 0.1
    assert hists["vmap"].test_accuracy[10] > 0.4
    for mode in ("chunked", "loop"):
        np.testing.assert_allclose(hists[mode].metrics["accuracy_mean"], acc, atol=1e-4)
    for name in metrics.METRIC_NAMES + ("train_loss", "dropped_updates", "round_seconds"):
        assert hists["vmap"].metrics[name].shape == (10,), name


def test_same_seed_same_history_bit_for_bit():
    cfg = config.load(QUICK, overrides=("rounds=3",))
    a, b = simulation.run(cfg), simulation.run(cfg)
    for k in a.metrics:
        if k != "round_seconds":
            np.testing.assert_array_equal(a.metrics[k], b.metrics[k], err_msg=k)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)
    c = simulation.run(config.load(QUICK, overrides=("rounds=3", "seed=1")))
    assert not np.array_equal(a.metrics["accuracy_mean"], c.metrics["accuracy_mean"])


@pytest.mark.parametrize("mode", ["vmap", "chunked", "loop"])
def test_rounds_after_the_first_compile_nothing(mode):
    cfg = config.load(QUICK, overrides=(f"engine.mode={mode}", "availability.name=markov"))
    sim = simulation.Simulation(cfg)
    state, metrics = sim.step(sim.init())                # round 1 compiles
    with count_compilations() as compiled:
        for _ in range(3):
            state, metrics = sim.step(state)
        jax.block_until_ready((state, metrics))
    assert compiled == []
    assert int(state.round) == 4


def test_fedavg_one_client_full_batch_equals_gradient_descent():
    ds = data.synthetic(3, 60, 30, (4, 4, 1), seed=0)
    steps, lr = 4, 0.2
    cfg = config.load(None, overrides=(
        "rounds=1", "partition.num_clients=1", "partition.split_test=0.5",
        "selection.clients_per_round=1", "model.name=mlp", "model.hidden=[8]",
        f"local.steps={steps}", "local.batch_size=30", f"local.lr={lr}"))
    sim = simulation.Simulation(cfg, dataset=ds)
    state0 = sim.init()
    hist = simulation.run(cfg, sim=sim)
    n = int(sim.data.n[0])
    assert n == 30
    x, y = sim.data.x[0, :n], sim.data.y[0, :n]
    p = state0.params
    loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(
        sim.model.apply(q, x), y).mean()
    for _ in range(steps):
        p = jax.tree.map(lambda a, g: a - lr * g, p, jax.grad(loss)(p))
    for a, b in zip(jax.tree.leaves(hist.params), jax.tree.leaves(p)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_nan_update_is_dropped_and_counted():
    cfg = config.load(QUICK, overrides=("rounds=2", "selection.name=full"))
    plain = simulation.Simulation(cfg)
    bad_n = int(plain.data.n[3])
    expected = int(jnp.sum(plain.data.n == bad_n))
    train = plain.local_train

    def poisoned(params, shard, steps, key):
        out = train(params, shard, steps, key)
        scale = jnp.where(shard.n == bad_n, jnp.nan, 1.0)
        return out._replace(delta=jax.tree.map(lambda d: d * scale, out.delta))

    backend = backends.local(plain.mode, poisoned, chunk_size=plain.chunk_size)
    sim = simulation.Simulation(cfg, backend=backend)
    hist = simulation.run(cfg, sim=sim)
    np.testing.assert_array_equal(hist.metrics["dropped_updates"], [expected] * 2)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(hist.params))
    assert hist.metrics["accuracy_mean"][-1] > 0.2


def test_fair_select_with_markov_records_all_ten_metrics():
    cfg = config.load(QUICK, overrides=(
        "rounds=5", "selection.name=fair_select", "availability.name=markov",
        "availability.p_drop=0.3", "availability.p_return=0.4"))
    hist = simulation.run(cfg)
    for name in metrics.METRIC_NAMES:
        assert hist.metrics[name].shape == (5,) and np.isfinite(hist.metrics[name]).all(), name
    assert (hist.metrics["available"] < 20).any()          # clients really come and go
    assert hist.clients["participation"].sum() == hist.metrics["selected"].sum()


@pytest.mark.cifar10
def test_cifar10_fedavg_accuracy_rises(cifar10):
    cfg = config.load("experiments/cifar10_fedavg.yaml", overrides=(
        "rounds=3", "local.steps=15", "partition.max_test_per_client=20",
        "data.test_subset=1000"))
    hist = simulation.run(cfg, dataset=cifar10)
    acc = hist.metrics["accuracy_mean"]
    assert acc[-1] > acc[0] and acc[-1] > 0.15, acc
