"""Tests for fsjax.metrics: each metric against numpy on hand-made inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsjax import metrics as mt


def np_jain(x):
    x = np.asarray(x, np.float64)
    return x.sum() ** 2 / (len(x) * (x ** 2).sum())


def np_gini(x):
    x = np.asarray(x, np.float64)
    return np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean())


def np_kl(p, q):
    p = np.asarray(p, np.float64) / np.sum(p)
    q = np.asarray(q, np.float64) / np.sum(q)
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / q[nz])))


RNG = np.random.default_rng(0)
SAMPLES = [np.array([0.2, 0.5, 0.9, 0.4]), RNG.uniform(0, 1, 37), RNG.integers(0, 20, 100).astype(float)]


def test_jain():
    assert float(mt.jain(jnp.full(7, 0.3))) == pytest.approx(1.0)
    assert float(mt.jain(jnp.array([1.0, 0.0, 0.0, 0.0]))) == pytest.approx(0.25)  # 1/n
    assert float(mt.jain(jnp.zeros(5))) == 1.0  # all equal (zero)
    assert float(mt.jain(jnp.array([1.0, 2.0, 3.0]))) == pytest.approx(36 / 42)
    for x in SAMPLES:
        assert float(mt.jain(x)) == pytest.approx(np_jain(x), rel=1e-5)


def test_gini():
    assert float(mt.gini(jnp.full(9, 4.0))) == pytest.approx(0.0, abs=1e-6)
    assert float(mt.gini(jnp.zeros(4))) == 0.0
    assert float(mt.gini(jnp.array([0.0, 0.0, 0.0, 5.0]))) == pytest.approx(0.75)  # (n-1)/n
    assert float(mt.gini(jnp.array([1.0, 3.0]))) == pytest.approx(0.25)
    for x in SAMPLES:
        assert float(mt.gini(x)) == pytest.approx(np_gini(x), rel=1e-5, abs=1e-6)
    # Order does not matter.
    x = SAMPLES[1]
    assert float(mt.gini(x[::-1])) == pytest.approx(float(mt.gini(x)), rel=1e-6)


def test_coefficient_of_variation():
    assert float(mt.coefficient_of_variation(jnp.full(3, 2.0))) == 0.0
    assert float(mt.coefficient_of_variation(jnp.zeros(3))) == 0.0
    assert float(mt.coefficient_of_variation(jnp.array([1.0, 3.0]))) == pytest.approx(0.5)
    assert np.isinf(float(mt.coefficient_of_variation(jnp.array([-1.0, 1.0]))))
    for x in SAMPLES:
        assert float(mt.coefficient_of_variation(x)) == pytest.approx(x.std() / x.mean(), rel=1e-5)


def test_participation_rate_gap():
    part = np.array([2, 5, 0, 9, 1])
    ever = np.array([True, True, False, False, True])
    rounds = 10
    assert float(mt.participation_rate_gap(part, rounds, ever)) == pytest.approx((5 - 1) / 10)
    assert float(mt.participation_rate_gap(part, rounds, np.ones(5, bool))) == pytest.approx(0.9)
    assert float(mt.participation_rate_gap(part, rounds, np.zeros(5, bool))) == 0.0
    assert float(mt.participation_rate_gap(np.full(4, 3), 6, np.ones(4, bool))) == 0.0
    np.testing.assert_allclose(mt.participation_rate(part, rounds), part / 10)


def test_label_kl():
    q = np.array([0.1, 0.2, 0.3, 0.4])
    p = np.array([10.0, 0.0, 5.0, 5.0])
    assert float(mt.label_kl(p, q)) == pytest.approx(np_kl(p, q), rel=1e-4)
    # Equal distributions (counts vs probabilities) give 0.
    assert float(mt.label_kl(q * 50, q)) == pytest.approx(0.0, abs=1e-6)
    # A single label against uniform: log L.
    assert float(mt.label_kl(np.eye(10)[3] * 7, np.full(10, 0.1))) == pytest.approx(np.log(10), rel=1e-5)
    for _ in range(3):
        a, b = RNG.uniform(0, 5, 10), RNG.uniform(0.1, 5, 10)
        assert float(mt.label_kl(a, b)) == pytest.approx(np_kl(a, b), rel=1e-4)
    # A label absent globally but selected stays finite (smoothing); nothing selected: NaN.
    assert np.isfinite(float(mt.label_kl(np.array([1.0, 1.0]), np.array([1.0, 0.0]))))
    assert np.isnan(float(mt.label_kl(np.zeros(4), q)))


def test_unseen_labels():
    assert int(mt.unseen_labels(np.array([3.0, 0.0, 1.0, 0.0]))) == 2
    assert int(mt.unseen_labels(np.zeros(10))) == 10
    assert int(mt.unseen_labels(np.ones(10))) == 0


def test_class_loss_variance_skips_nan_and_variance_matches_numpy():
    x = np.array([0.5, 1.5, 2.0, 0.1])
    assert float(mt.class_loss_variance(x)) == pytest.approx(np.var(x), rel=1e-5)
    assert float(mt.class_loss_variance(np.array([1.0, np.nan, 3.0]))) == pytest.approx(1.0)
    assert float(mt.class_loss_variance(np.full(10, 0.7))) == pytest.approx(0.0, abs=1e-10)
    for s in SAMPLES:
        assert float(mt.variance(s)) == pytest.approx(np.var(s), rel=1e-5)


def _inputs(seed, c=20, num_labels=10):
    rng = np.random.default_rng(seed)
    return dict(
        accuracy=rng.uniform(0.2, 0.9, c).astype(np.float32),
        cum_accuracy=rng.uniform(0, 5, c).astype(np.float32),
        participation=rng.integers(0, 8, c).astype(np.int32),
        ever_available=rng.random(c) < 0.8,
        rounds=np.int32(10),
        selected_label_counts=np.where(rng.random(num_labels) < 0.7, rng.uniform(1, 50, num_labels), 0.0)
        .astype(np.float32),
        global_label_dist=np.full(num_labels, 0.1, np.float32),
        class_loss=rng.uniform(0.5, 3, num_labels).astype(np.float32),
    )


def _numpy_round_metrics(inp):
    acc, util, part = inp["accuracy"], inp["cum_accuracy"], inp["participation"]
    rate = part / inp["rounds"]
    ever = inp["ever_available"]
    return {
        "accuracy_mean": acc.mean(),
        "accuracy_jain": np_jain(acc),
        "cum_accuracy_cv": util.std() / util.mean(),
        "cum_accuracy_jain": np_jain(util),
        "participation_rate_gap": rate[ever].max() - rate[ever].min(),
        "accuracy_variance": acc.var(),
        "label_kl": np_kl(inp["selected_label_counts"], inp["global_label_dist"]),
        "unseen_labels": float((inp["selected_label_counts"] == 0).sum()),
        "class_loss_variance": inp["class_loss"].var(),
    }


def test_round_metrics_names_and_values():
    inp = _inputs(1)
    got = mt.round_metrics(**inp)
    assert tuple(got) == mt.METRIC_NAMES and len(mt.METRIC_NAMES) == 9
    want = _numpy_round_metrics(inp)
    for name in mt.METRIC_NAMES:
        assert got[name].shape == () and got[name].dtype == jnp.float32
        assert float(got[name]) == pytest.approx(want[name], rel=1e-4, abs=1e-6), name


def test_round_metrics_of_identical_clients_are_perfectly_fair():
    c = 6
    got = mt.round_metrics(accuracy=np.full(c, 0.6), cum_accuracy=np.full(c, 2.0),
                           participation=np.full(c, 3), ever_available=np.ones(c, bool), rounds=5,
                           selected_label_counts=np.full(4, 5.0), global_label_dist=np.full(4, 0.25),
                           class_loss=np.full(4, 1.1))
    expected = {"accuracy_mean": 0.6, "accuracy_jain": 1.0, "cum_accuracy_cv": 0.0,
                "cum_accuracy_jain": 1.0, "participation_rate_gap": 0.0, "accuracy_variance": 0.0,
                "label_kl": 0.0, "unseen_labels": 0.0, "class_loss_variance": 0.0}
    for name, v in expected.items():
        assert float(got[name]) == pytest.approx(v, abs=1e-6), name


def test_round_metrics_jit_and_vmap_equal_loop():
    batch = [_inputs(s) for s in range(3)]
    stacked = {k: np.stack([b[k] for b in batch]) for k in batch[0]}
    fn = jax.jit(lambda kw: mt.round_metrics(**kw))
    batched = jax.jit(jax.vmap(lambda kw: mt.round_metrics(**kw)))(stacked)
    for i, b in enumerate(batch):
        single = fn(b)
        for name in mt.METRIC_NAMES:
            assert float(batched[name][i]) == pytest.approx(float(single[name]), rel=1e-5, abs=1e-7)
