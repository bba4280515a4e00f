"""Tests for fsjax.fair_aggregation: Horvitz-Thompson/Hajek, AFL, FedFV (REFERENCE.md B)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsjax import aggregation
from fsjax import fair_aggregation as fa


def _params():
    return {"a": jnp.zeros((2,)), "b": jnp.zeros((1, 2))}


def _deltas(rows):
    rows = np.asarray(rows, np.float32)       # [K, 4]
    return {"a": jnp.asarray(rows[:, :2]), "b": jnp.asarray(rows[:, 2:].reshape(-1, 1, 2))}


def _flat(p):
    return np.concatenate([np.asarray(p["a"]).ravel(), np.asarray(p["b"]).ravel()])


def test_registry_names():
    assert {"fedfv", "horvitz_thompson", "afl"} <= set(aggregation.REGISTRY)
    agg = fa.horvitz_thompson(num_clients=3, normalise=True)
    assert agg.client_terms is None and agg.finish is None


def test_horvitz_thompson_and_hajek_hand_example():
    # N = 10; slots: q = [0.5, 1.0, 0.2, 0.3], pi = [0.4, 1.0, 0.01, 0.9]; slot 3 failed.
    # multipliers min(1 / (10 q pi), 100) = [0.5, 0.1, 50, (unused)]
    q = jnp.array([0.5, 1.0, 0.2, 0.3])
    pi = jnp.array([0.4, 1.0, 0.01, 0.9])
    used = jnp.array([True, True, True, False])
    np.testing.assert_allclose(fa.ht_multipliers(q, pi, used, 10), [0.5, 0.1, 50.0, 0.0], rtol=1e-6)
    # the clip: q pi = 1e-4 -> 1 / (10 * 1e-4) = 1000 -> 100; q pi = 0 -> floor -> 100
    np.testing.assert_allclose(fa.ht_multipliers(jnp.array([0.01, 0.0]), jnp.array([0.01, 0.5]),
                                                 jnp.ones(2, bool), 10), [100.0, 100.0])
    rows = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [np.nan, 5, 5, 5]]   # a NaN in the failed slot
    ctx = fa.SlotContext(jnp.arange(4), q, pi)
    weights = jnp.array([20.0, 10.0, 5.0, 0.0])
    ht = fa.horvitz_thompson(num_clients=10)
    new, _ = ht.apply(ht.init(_params()), _params(), _deltas(rows), weights, jnp.zeros(4), context=ctx)
    np.testing.assert_allclose(_flat(new), [0.5, 0.1, 50.0, 0.0], rtol=1e-6)
    hajek = fa.horvitz_thompson(num_clients=10, normalise=True)
    new, _ = hajek.apply(hajek.init(_params()), _params(), _deltas(rows), weights, jnp.zeros(4),
                         context=ctx)
    np.testing.assert_allclose(_flat(new), np.array([0.5, 0.1, 50.0, 0.0]) / 50.6, rtol=1e-6)


def test_horvitz_thompson_no_participant_and_missing_context():
    ht = fa.horvitz_thompson(num_clients=3)
    p = {"a": jnp.ones(2), "b": jnp.ones((1, 2))}
    ctx = fa.SlotContext(jnp.arange(2), jnp.ones(2), jnp.ones(2))
    new, _ = ht.apply(ht.init(p), p, _deltas([[1, 1, 1, 1], [2, 2, 2, 2]]), jnp.zeros(2),
                      jnp.zeros(2), context=ctx)
    np.testing.assert_array_equal(_flat(new), 1.0)
    with pytest.raises(ValueError, match="needs context=SlotContext"):
        ht.apply(ht.init(p), p, _deltas([[1, 1, 1, 1]]), jnp.ones(1), jnp.zeros(1))
    with pytest.raises(ValueError, match="num_clients=0: expected the population size"):
        fa.horvitz_thompson(num_clients=0)


def test_afl_step_and_lambda_stay_on_simplex():
    n = 5
    agg = fa.afl(num_clients=n, eta_l=0.1, eta_w=1.0)
    params = _params()
    state = agg.init(params)
    np.testing.assert_allclose(state.lam, 0.2)
    rng = np.random.default_rng(0)
    lam_ref = np.full(n, 0.2)
    w_ref = np.zeros(4)
    apply = jax.jit(agg.apply)
    for t in range(30):
        slots = rng.choice(n, 3, replace=False)
        weights = (rng.random(3) < 0.8).astype(np.float32) * 10
        losses = rng.uniform(0.5, 3.0, 3).astype(np.float32)
        rows = rng.normal(size=(3, 4)).astype(np.float32)
        ctx = fa.SlotContext(jnp.asarray(slots), jnp.ones(3), jnp.ones(3))
        params, state = apply(state, params, _deltas(rows), jnp.asarray(weights),
                              jnp.asarray(losses), context=ctx)
        used = weights > 0
        if used.any():
            lk = np.where(used, lam_ref[slots], 0.0)
            w_ref = w_ref + (lk / lk.sum()) @ rows
            lam_ref[slots[used]] *= np.exp(0.1 * losses[used])
            lam_ref /= lam_ref.sum()
        lam = np.asarray(state.lam)
        assert (lam >= 0).all() and lam.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(lam, lam_ref, rtol=1e-4)
        np.testing.assert_allclose(_flat(params), w_ref, rtol=1e-4, atol=1e-5)


def test_fedfv_orthogonal_deltas_are_averaged():
    agg = fa.fedfv()
    rows = [[1, 0, 0, 0], [0, 2, 0, 0]]
    new, _ = agg.apply(agg.init(_params()), _params(), _deltas(rows), jnp.array([1.0, 3.0]),
                       jnp.zeros(2))
    np.testing.assert_allclose(_flat(new), [0.25, 1.5, 0, 0])


def test_fedfv_opposed_and_conflicting_deltas():
    agg = fa.fedfv()
    # exactly opposed: D0 is projected to 0, then D1 meets a zero D0 and stays
    new, _ = agg.apply(agg.init(_params()), _params(), _deltas([[2, 0, 0, 0], [-1, 0, 0, 0]]),
                       jnp.ones(2), jnp.zeros(2))
    np.testing.assert_allclose(_flat(new), [-0.5, 0, 0, 0], atol=1e-7)
    # conflicting, not collinear: a = (1, 0), b = (-1, 1): a' = a + b / 2 = (.5, .5);
    # then b . a' = 0, no conflict, b stays (the study's in-place order)
    proj = fa.fedfv_project(jnp.array([[1.0, 0.0], [-1.0, 1.0]]), jnp.ones(2, bool))
    np.testing.assert_allclose(proj, [[0.5, 0.5], [-1.0, 1.0]])
    new, _ = agg.apply(agg.init(_params()), _params(), _deltas([[1, 0, 0, 0], [-1, 1, 0, 0]]),
                       jnp.array([1.0, 1.0]), jnp.zeros(2))
    np.testing.assert_allclose(_flat(new), [-0.25, 0.75, 0, 0])
    # an unused slot takes no part, even with NaN
    proj = fa.fedfv_project(jnp.array([[1.0, 0.0], [jnp.nan, 1.0]]), jnp.array([True, False]))
    np.testing.assert_allclose(proj[0], [1.0, 0.0])


def test_fedfv_matches_numpy_loop():
    rng = np.random.default_rng(4)
    flat = rng.normal(size=(5, 7)).astype(np.float32)
    used = np.array([True, True, False, True, True])
    d = np.where(used[:, None], flat, 0.0).astype(np.float64)
    for i in range(5):
        for j in range(5):
            if i == j or not (used[i] and used[j]):
                continue
            dot, norm = d[i] @ d[j], d[j] @ d[j]
            if dot < 0 and norm > 0:
                d[i] = d[i] - dot / norm * d[j]
    np.testing.assert_allclose(fa.fedfv_project(jnp.asarray(flat), jnp.asarray(used)), d,
                               rtol=1e-4, atol=1e-5)


def test_qffl_q0_equals_fedavg():
    rows = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    w = jnp.array([5.0, 5.0, 5.0])
    q0 = aggregation.qffl(q=0.0, lipschitz=1.0)
    fedavg = aggregation.fedavg()
    a, _ = q0.apply(q0.init(_params()), _params(), _deltas(rows), w, jnp.array([1.0, 2.0, 3.0]))
    b, _ = fedavg.apply(fedavg.init(_params()), _params(), _deltas(rows), w, jnp.zeros(3))
    np.testing.assert_allclose(_flat(a), _flat(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory, kwargs, match", [
    (fa.afl, dict(num_clients=3, eta_l=-1), r"eta_l=-1: expected a finite number >= 0"),
    (fa.afl, dict(num_clients=3, eta_w=0), r"eta_w=0: expected a finite number > 0"),
    (fa.afl, dict(num_clients=2.5), r"num_clients=2\.5"),
    (fa.horvitz_thompson, dict(num_clients=3, clip=0), r"clip=0"),
])
def test_bad_arguments(factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)
