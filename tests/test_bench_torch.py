"""The PyTorch baseline computes what fsjax computes; the round benchmark runs.

Not timed. The torch tests skip cleanly where torch is not installed (it is
kept out of ``make test``'s install: ``pip install -e '.[bench]'`` adds it);
the smoke test of ``bench.round`` needs no torch and runs everywhere.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fsjax import aggregation, engine, local, models


@pytest.fixture(scope="module")
def tb():
    """``bench.torch_baseline``, or a skip where torch is not installed."""
    pytest.importorskip("torch")
    from bench import torch_baseline
    torch_baseline.set_threads()
    return torch_baseline


def _setup(batch=10, seed=0):
    model = models.build("cnn", 10)
    params = models.init_params(model, jax.random.key(seed), (32, 32, 3))
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (1, batch, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, (1, batch)).astype(np.int32)
    return model, params, x, y


def _max_diff(a, b):
    return max(float(np.abs(np.asarray(u) - np.asarray(v)).max())
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_params_round_trip(tb):
    _, params, _, _ = _setup()
    net = tb.TorchCNN(10)
    tb.load_flax_params(net, params)
    assert _max_diff(tb.to_flax_layout(net), params) == 0.0


def test_forward_logits_agree(tb):
    import torch
    model, params, x, _ = _setup(batch=6)
    net = tb.TorchCNN(10)
    tb.load_flax_params(net, params)
    with torch.no_grad():
        ours = net(torch.from_numpy(x[0])).numpy()
    np.testing.assert_allclose(ours, np.asarray(model.apply(params, jnp.asarray(x[0]))),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_one_client_one_step_same_update(tb):
    """One client, one SGD step on the same batch (its whole shard, so row order
    does not matter), then FedAvg: the same new global weights in both."""
    model, params, x, y = _setup(batch=10)
    lr = 0.1
    train = local.make_local_train(model.apply, optax.sgd(lr), batch_size=10, max_steps=1)
    shards = local.Shard(jnp.asarray(x), jnp.asarray(y), jnp.asarray([10], jnp.int32))
    res = engine.train_clients(train, params, shards, jnp.asarray([1], jnp.int32),
                               jax.random.split(jax.random.key(1), 1), mode="loop")
    agg = aggregation.fedavg()
    new_params, _ = agg.apply(agg.init(params), params, res.delta, jnp.ones(1), res.loss0)

    net = tb.TorchCNN(10)
    tb.load_flax_params(net, params)
    sim = tb.SequentialFedAvg(net, x, y, np.array([10]), lr=lr, batch_size=10, steps=1)
    loss = sim.round([0])
    ours = tb.to_flax_layout(net)
    delta_torch = jax.tree.map(np.subtract, ours, jax.tree.map(np.asarray, params))
    delta_fsjax = jax.tree.map(lambda d: np.asarray(d[0]), res.delta)
    assert _max_diff(delta_torch, delta_fsjax) < 1e-4
    assert _max_diff(ours, new_params) < 1e-4
    assert max(float(np.abs(d).max()) for d in jax.tree.leaves(delta_fsjax)) > 1e-3  # it moved
    np.testing.assert_allclose(loss, float(res.loss[0]), rtol=1e-4)


@pytest.mark.slow
def test_simulator_visits_each_example_once_per_epoch(tb):
    """5 steps of batch 10 on 50 examples is one epoch: a different order than
    fsjax, but the same multiset of examples (each used once)."""
    import torch
    net = tb.TorchCNN(10)
    x = np.zeros((1, 50, 32, 32, 3), np.uint8)
    x[0, :, 0, 0, 0] = np.arange(50)           # tags each example
    y = np.arange(50, dtype=np.int32)[None] % 10
    sim = tb.SequentialFedAvg(net, x, y, np.array([50]), steps=5)
    batches = []
    orig = net.forward
    net.forward = lambda xb: (batches.append(xb[:, 0, 0, 0].tolist()), orig(xb))[1]
    sim.round([0])
    assert [len(b) for b in batches] == [10] * 5
    assert sorted(sum(batches, [])) == list(range(50))
    assert isinstance(sim.x, torch.Tensor)


@pytest.mark.slow
def test_round_benchmark_smoke(tmp_path, capsys):
    """``bench.round --tiny`` prints every mode and the ratio line; torch only if importable."""
    from bench import round as round_bench
    try:
        import torch  # noqa: F401
        has_torch = True
    except ImportError:
        has_torch = False
    summary = round_bench.main(["--tiny", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    auto_mode, auto_chunk = engine.resolve_mode("auto")
    auto_label = f"auto -> {'chunked(%d)' % auto_chunk if auto_mode == 'chunked' else auto_mode}"
    for label in ("vmap", "chunked(1)", "chunked(2)", "loop", auto_label):
        assert any(line.startswith(label + " ") for line in lines), label
    assert any(line.startswith("torch (sequential)") for line in lines) == has_torch
    assert re.fullmatch(r"speedup_vs_torch=(nan|\d+\.\d{3})", lines[-1]), lines[-1]
    assert (lines[-1] == "speedup_vs_torch=nan") == (not has_torch)
    assert (tmp_path / "round.csv").stat().st_size > 0
    assert (tmp_path / "round_scaling.png").stat().st_size > 0
    header = (tmp_path / "round.csv").read_text().splitlines()[0].split(",")
    for col in ("mode", "median_s", "min_s", "max_s", "first_round_s", "peak_rss_mb",
                "speedup_vs_torch"):
        assert col in header
    assert summary["best"]
