"""Robust aggregation and the update-norm bound (fsjax.robust) against direct numpy
references, and a poisoning test in the simulation: one client sending a 1e20 update
every round."""

from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from fsjax import aggregation, backends, config, robust, simulation

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "experiments" / "quick.yaml")


def _case(seed=0, K=7, used=(1, 1, 0, 1, 1, 1, 0)):
    rng = np.random.default_rng(seed)
    deltas = {"a": rng.normal(size=(K, 3, 4)).astype(np.float32),
              "b": {"c": rng.normal(size=(K, 5)).astype(np.float32)}}
    deltas["a"][2] = np.nan                    # an unused slot's delta never counts
    weights = np.asarray(used, np.float32) * rng.integers(1, 50, K)
    params = {"a": rng.normal(size=(3, 4)).astype(np.float32),
              "b": {"c": rng.normal(size=5).astype(np.float32)}}
    return params, deltas, weights


def _np_median(x, used):
    return np.median(x[used], axis=0)


def _np_trimmed(x, used, beta):
    v = np.sort(x[used], axis=0)
    t = int(np.floor(beta * len(v)))
    return v[t:len(v) - t].mean(axis=0)


def _np_krum(flat, used, f):
    idx = np.flatnonzero(used)
    m = len(idx)
    n = min(max(m - f - 2, 1), max(m - 1, 1))
    scores = []
    for i in idx:
        d = sorted(float(np.sum((flat[i] - flat[j]) ** 2)) for j in idx if j != i)
        scores.append(sum(d[:n]))
    return idx[int(np.argmin(scores))]


def _apply(agg, params, deltas, weights):
    new, _ = agg.apply(agg.init(params), params, deltas, weights, np.zeros(len(weights)))
    return jax.device_get(new)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_median_matches_numpy(seed):
    params, deltas, weights = _case(seed)
    used = weights > 0
    new = _apply(robust.median(), params, deltas, weights)
    for p, d, n in zip(jax.tree.leaves(params), jax.tree.leaves(deltas), jax.tree.leaves(new)):
        np.testing.assert_allclose(n, p + _np_median(d, used), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("beta, used", [(0.0, (1,) * 7), (0.2, (1, 1, 0, 1, 1, 1, 0)),
                                        (0.3, (1,) * 7), (0.49, (1, 0, 0, 1, 1, 0, 0))])
def test_trimmed_mean_matches_numpy(beta, used):
    params, deltas, weights = _case(3, used=used)
    deltas["a"][2] = 0.5 if used[2] else np.nan
    u = weights > 0
    new = _apply(robust.trimmed_mean(beta), params, deltas, weights)
    for p, d, n in zip(jax.tree.leaves(params), jax.tree.leaves(deltas), jax.tree.leaves(new)):
        np.testing.assert_allclose(n, p + _np_trimmed(d, u, beta), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("f, seed", [(0, 0), (1, 1), (2, 2), (1, 4)])
def test_krum_matches_numpy(f, seed):
    params, deltas, weights = _case(seed)
    used = weights > 0
    flat = np.concatenate([np.nan_to_num(d.reshape(len(weights), -1))
                           for d in jax.tree.leaves(deltas)], axis=1)
    i = _np_krum(flat, used, f)
    assert int(robust.krum_index(flat, used, f)) == i
    new = _apply(robust.krum(f), params, deltas, weights)
    for p, d, n in zip(jax.tree.leaves(params), jax.tree.leaves(deltas), jax.tree.leaves(new)):
        np.testing.assert_allclose(n, p + d[i], rtol=1e-6)


def test_krum_picks_away_from_a_cluster_of_attackers():
    flat = np.zeros((6, 4), np.float32)
    flat[:4] += np.arange(4)[:, None] * 0.01
    flat[4:] = 1e3
    assert int(robust.krum_index(flat, np.ones(6, bool), 2)) < 4


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum"])
def test_robust_aggregators_keep_params_when_nobody_reported(name):
    params, deltas, _ = _case(0)
    agg = aggregation.make(name, optax.adam(0.1))
    new = _apply(agg, params, deltas, np.zeros(7, np.float32))
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    assert agg.client_terms is None and agg.finish is None   # stacked path only


@pytest.mark.parametrize("mode", ["clip", "reject"])
def test_norm_bound_matches_numpy(mode):
    _, deltas, weights = _case(5)
    deltas["b"]["c"][3] *= 1e6                 # one slot far over the median norm
    used = weights > 0
    flat = np.concatenate([np.nan_to_num(d.reshape(7, -1)) for d in jax.tree.leaves(deltas)], 1)
    norms = np.linalg.norm(flat.astype(np.float64), axis=1)
    bound = 1.5 * np.median(norms[used])
    over = used & (norms > bound)
    assert over.tolist() == [False, False, False, True, False, False, False]
    out, w, n = jax.device_get(robust.bound_updates(deltas, weights, 1.5, mode))
    assert float(n) == over.sum()
    if mode == "reject":
        np.testing.assert_array_equal(w, np.where(over, 0, weights))
        got = out
    else:
        np.testing.assert_array_equal(w, weights)
        got = out
        back = np.concatenate([np.nan_to_num(d.reshape(7, -1)) for d in jax.tree.leaves(got)], 1)
        np.testing.assert_allclose(np.linalg.norm(back[3]), bound, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(deltas)):
        keep = ~over if mode == "clip" else np.ones(7, bool)
        np.testing.assert_array_equal(np.nan_to_num(a[keep]), np.nan_to_num(b[keep]))


def test_config_names_the_keys():
    with pytest.raises(ValueError, match="aggregation.norm_bound"):
        config.load(QUICK, ("aggregation.norm_bound=-1",))
    with pytest.raises(ValueError, match="aggregation.norm_bound_mode"):
        config.load(QUICK, ("aggregation.norm_bound_mode=drop",))
    with pytest.raises(ValueError, match="beta=0.5"):
        simulation.Simulation(config.load(QUICK, ("aggregation.name=trimmed_mean",
                                                  "aggregation.beta=0.5")))
    with pytest.raises(ValueError, match="aggregation.g"):
        config.load(QUICK, ("aggregation.name=krum", "aggregation.g=1"))


# ------------------------------------------------------------------ poisoning


def _poisoned(sim):
    """``sim``'s own backend, with slot 0's delta replaced by 1e20 everywhere."""
    inner = sim.backend

    def train(state, plan, shards):
        res, reported = inner.train(state, plan, shards)
        return res._replace(delta=jax.tree.map(lambda d: d.at[0].set(1e20), res.delta)), reported

    return backends.Backend("poisoned", inner.on_host, train)


def _accuracy(*overrides, poison=False):
    cfg = config.load(QUICK, ("rounds=8", "engine.mode=vmap", *overrides))
    sim = simulation.Simulation(cfg)
    if poison:
        sim.backend = _poisoned(sim)
    hist = simulation.run(cfg, sim=sim)
    return hist.metrics


def _noise(acc):
    """The honest run's largest round-to-round change of accuracy_mean (after round 2)."""
    return float(np.max(np.abs(np.diff(acc[1:]))))


@pytest.mark.slow
@pytest.mark.parametrize("defence", [("aggregation.name=median",),
                                     ("aggregation.name=trimmed_mean", "aggregation.beta=0.2"),
                                     ("aggregation.name=krum", "aggregation.f=1"),
                                     ("aggregation.norm_bound=2.0",),
                                     ("aggregation.norm_bound=2.0",
                                      "aggregation.norm_bound_mode=reject")])
def test_one_1e20_update_moves_accuracy_less_than_honest_noise(defence):
    honest = _accuracy(*defence)["accuracy_mean"]
    attacked = _accuracy(*defence, poison=True)
    acc = attacked["accuracy_mean"]
    assert np.all(np.isfinite(acc)) and np.all(np.isfinite(attacked["train_loss"]))
    assert abs(acc[-1] - honest[-1]) <= _noise(honest), (acc, honest)
    if "aggregation.norm_bound=2.0" in defence:
        np.testing.assert_array_equal(attacked["norm_bounded_updates"], 1.0)


@pytest.mark.slow
def test_without_a_defence_one_1e20_update_ruins_the_run():
    honest = _accuracy()["accuracy_mean"]
    acc = _accuracy(poison=True)["accuracy_mean"]
    assert abs(acc[-1] - honest[-1]) > _noise(honest), (acc, honest)


def test_chunked_engine_uses_the_stacked_path_for_robust_aggregation():
    common = ("rounds=2", "aggregation.name=median", "aggregation.norm_bound=3.0")
    vmap = simulation.run(config.load(QUICK, (*common, "engine.mode=vmap"))).metrics
    chunked = simulation.run(config.load(QUICK, (*common, "engine.mode=chunked",
                                                 "engine.chunk_size=2"))).metrics
    np.testing.assert_allclose(chunked["accuracy_mean"], vmap["accuracy_mean"], atol=1e-5)
    assert "norm_bounded_updates" in chunked
    assert "norm_bounded_updates" not in simulation.run(
        config.load(QUICK, ("rounds=1",))).metrics
