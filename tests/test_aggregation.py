import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fsjax import aggregation


def _deltas(k=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.normal(size=(k, 3, 2)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(k, 2)), jnp.float32)}


PARAMS = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}


def test_fedavg_is_example_weighted_mean_and_skips_zero_weights():
    d = _deltas()
    d["w"] = d["w"].at[3].set(jnp.nan)          # a dropped slot must not poison the mean
    weights = jnp.array([1.0, 3.0, 0.0, 0.0])
    agg = aggregation.fedavg()
    new, _ = agg.apply(agg.init(PARAMS), PARAMS, d, weights, jnp.zeros(4))
    expect = PARAMS["w"] + (1 * d["w"][0] + 3 * d["w"][1]) / 4
    np.testing.assert_allclose(new["w"], expect, rtol=1e-6)


def test_no_weight_keeps_params_and_state():
    agg = aggregation.fedavg(aggregation.server_optimizer("adam", lr=0.1))
    state = agg.init(PARAMS)
    new, new_state = agg.apply(state, PARAMS, _deltas(), jnp.zeros(4), jnp.zeros(4))
    np.testing.assert_array_equal(new["w"], PARAMS["w"])
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state),
                                                    jax.tree.leaves(new_state)))


def test_qffl_q0_equals_fedavg_with_equal_weights():
    d = _deltas()
    w = jnp.array([5.0, 5.0, 5.0, 0.0])
    losses = jnp.array([0.3, 2.0, 1.1, 9.0])
    fa = aggregation.fedavg()
    q0 = aggregation.qffl(q=0.0, lipschitz=7.0)
    a, _ = fa.apply(fa.init(PARAMS), PARAMS, d, w, losses)
    b, _ = q0.apply(q0.init(PARAMS), PARAMS, d, w, losses)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_qffl_matches_paper_formula_and_favours_high_loss():
    d = _deltas(3)
    losses = jnp.array([0.5, 1.0, 4.0])
    q, L = 2.0, 10.0
    agg = aggregation.qffl(q=q, lipschitz=L)
    new, _ = agg.apply(agg.init(PARAMS), PARAMS, d, jnp.ones(3), losses)
    flat = np.concatenate([np.asarray(d["b"]), np.asarray(d["w"]).reshape(3, -1)], axis=1)
    dw = -L * flat
    num = sum(losses[k] ** q * dw[k] for k in range(3))
    h = sum(q * losses[k] ** (q - 1) * np.sum(dw[k] ** 2) + L * losses[k] ** q for k in range(3))
    expect = np.concatenate([np.asarray(PARAMS["b"]), np.asarray(PARAMS["w"]).reshape(-1)]) - num / h
    got = np.concatenate([np.asarray(new["b"]), np.asarray(new["w"]).reshape(-1)])
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-6)


def test_server_momentum_accumulates():
    agg = aggregation.fedavg(aggregation.server_optimizer("momentum", lr=1.0, momentum=0.5))
    d = {"w": jnp.ones((1, 3, 2)), "b": jnp.ones((1, 2))}
    state = agg.init(PARAMS)
    p1, state = agg.apply(state, PARAMS, d, jnp.ones(1), jnp.zeros(1))
    p2, state = agg.apply(state, p1, d, jnp.ones(1), jnp.zeros(1))
    np.testing.assert_allclose(p1["b"], 1.0)
    np.testing.assert_allclose(p2["b"], 1.0 + 1.5)     # second step: 1 + 0.5 * 1


def test_bad_names():
    with pytest.raises(ValueError, match="server optimizer"):
        aggregation.server_optimizer("rmsprop")
    with pytest.raises(ValueError, match="aggregation name"):
        aggregation.make("geomedian")
    with pytest.raises(ValueError, match="q="):
        aggregation.qffl(q=-1)
