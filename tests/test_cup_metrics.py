"""Tests for fsjax.metrics.cup_metrics (REFERENCE.md B.6) against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsjax import cup_metrics as cm
from fsjax import metrics


def _run(sel, avail, part, util, m, rounds):
    out = metrics.cup_metrics(jnp.asarray(sel), jnp.asarray(avail), jnp.asarray(part),
                              jnp.asarray(util, jnp.float32), m, rounds)
    assert set(out) == set(cm.CUP_METRIC_NAMES)
    return {k: float(v) for k, v in out.items()}


# Hand example: N = 4, T = 4, m = 2.
#   a = [4, 2, 1, 0] -> pi = [1, .5, .25, 0]; K+ = clients 0, 1, 2
#   u = [0.4, 0.2, 0.1, 0.7] -> x = u / pi = [0.4, 0.4, 0.4] over K+ (client 3 undefined)
#   c = [3, 2, 1, 2] (client 3 selected while unavailable), p = [3, 2, 1, 0]
HAND = dict(sel=[3, 2, 1, 2], avail=[4, 2, 1, 0], part=[3, 2, 1, 0], util=[0.4, 0.2, 0.1, 0.7],
            m=2, rounds=4)


def test_hand_example_every_entry():
    out = _run(**HAND)
    assert out["utility_cv"] == pytest.approx(0.0, abs=1e-6)          # all x equal
    assert out["utility_jain"] == pytest.approx(1.0, rel=1e-6)
    # m' T / N = 2 * 4 / 4 = 2: |c - 2| = [1, 0, 1, 0]
    assert out["selection_gap"] == pytest.approx(1.0)
    # c / a over a > 0: [0.75, 1.0, 1.0] -> 0.25
    assert out["conditional_selection_gap"] == pytest.approx(0.25)
    # p = [3, 2, 1, 0]: sum |p_i - p_j| = 2 (1+2+3+1+2+1) = 20; / (2 * 4 * 6) = 20 / 48
    assert out["participation_gini"] == pytest.approx(20 / 48, rel=1e-6)
    # ceil(0.4) = 1 smallest u~ with undefined -> 0: 0
    assert out["worst10_utility"] == pytest.approx(0.0)


def test_unequal_utility_cv_jain_and_worst10():
    # N = 20, T = 10, everyone available half the time (pi = 0.5): x = 2 u
    u = np.arange(20, dtype=np.float32) / 10           # x = 0, 0.2, ..., 3.8
    x = 2 * u
    out = _run(np.zeros(20, int), np.full(20, 5), np.zeros(20, int), u, 3, 10)
    assert out["utility_cv"] == pytest.approx(x.std() / (x.mean() + 1e-3), rel=1e-5)
    assert out["utility_jain"] == pytest.approx(x.sum() ** 2 / (20 * (x ** 2).sum()), rel=1e-5)
    # ceil(0.1 * 20) = 2 smallest: (0 + 0.2) / 2
    assert out["worst10_utility"] == pytest.approx(0.1, rel=1e-5)
    # nobody selected: gap is m T / N = 3 * 10 / 20; conditional gap 0; gini 0 (all zero)
    assert out["selection_gap"] == pytest.approx(1.5)
    assert out["conditional_selection_gap"] == 0.0
    assert out["participation_gini"] == 0.0


def test_negative_gains_and_m_above_n():
    # utilities may be negative (signed accuracy gains); m' = min(m, N)
    out = _run([5, 5], [5, 5], [5, 5], [-0.5, 0.5], 7, 5)
    assert out["selection_gap"] == pytest.approx(0.0)       # m' = 2: 2 * 5 / 2 = 5
    assert out["utility_cv"] == 0.0                          # mean 0 -> 0
    assert out["utility_jain"] == pytest.approx(0.0)         # (sum x)^2 = 0
    assert out["worst10_utility"] == pytest.approx(-0.5)


def test_nobody_ever_available_and_zero_rounds():
    out = _run([1, 0, 0], [0, 0, 0], [0, 0, 0], [0.0, 0.0, 0.0], 1, 3)
    assert out["utility_cv"] == 0.0 and out["utility_jain"] == 0.0
    assert out["conditional_selection_gap"] == 0.0 and out["worst10_utility"] == 0.0
    assert out["selection_gap"] == pytest.approx(1.0)        # |c - 1 * 3 / 3| = [0, 1, 1]
    out = _run([0, 0], [0, 0], [0, 0], [0.0, 0.0], 1, 0)
    assert all(math.isfinite(v) for v in out.values())


def test_matches_numpy_reference_on_random_inputs():
    rng = np.random.default_rng(0)
    for _ in range(10):
        n, t, m = int(rng.integers(5, 60)), int(rng.integers(1, 40)), int(rng.integers(1, 8))
        a = rng.integers(0, t + 1, n)
        c = rng.integers(0, t + 1, n)
        p = np.minimum(a, c)
        u = rng.normal(0.1, 0.3, n).astype(np.float32)
        out = _run(c, a, p, u, m, t)
        pi = a / t
        k = pi > 0
        x = u[k] / pi[k]
        mean = x.mean() if k.any() else 0.0
        cv = x.std() / (mean + 1e-3) if k.any() and mean != 0 else 0.0
        jain = x.sum() ** 2 / (k.sum() * (x ** 2).sum()) if k.any() and (x ** 2).sum() > 0 else 0.0
        rate = c[a > 0] / a[a > 0]
        gini = (np.abs(p[:, None] - p[None, :]).sum() / (2 * n * p.sum())) if p.sum() else 0.0
        ut = np.where(k, u / np.where(k, pi, 1), 0.0)
        worst = np.sort(ut)[:math.ceil(0.1 * n)].mean()
        assert out["utility_cv"] == pytest.approx(cv, rel=1e-3, abs=1e-4)
        assert out["utility_jain"] == pytest.approx(jain, rel=1e-4, abs=1e-6)
        assert out["selection_gap"] == pytest.approx(np.abs(c - min(m, n) * t / n).max(), rel=1e-5)
        assert out["conditional_selection_gap"] == pytest.approx(
            rate.max() - rate.min() if rate.size else 0.0, rel=1e-5, abs=1e-6)
        assert out["participation_gini"] == pytest.approx(gini, rel=1e-5, abs=1e-6)
        assert out["worst10_utility"] == pytest.approx(worst, rel=1e-4, abs=1e-5)


def test_jit_vmap_equals_loop():
    rng = np.random.default_rng(1)
    sel = rng.integers(0, 9, (4, 12))
    avail = rng.integers(0, 9, (4, 12))
    part = np.minimum(sel, avail)
    util = rng.random((4, 12)).astype(np.float32)
    batched = jax.jit(jax.vmap(lambda s, a, p, u: metrics.cup_metrics(s, a, p, u, 3, 9)))(
        sel, avail, part, util)
    for i in range(4):
        single = metrics.cup_metrics(sel[i], avail[i], part[i], util[i], 3, 9)
        for key in single:
            np.testing.assert_allclose(batched[key][i], single[key], rtol=1e-6, err_msg=key)


def test_normalised_utility_undefined_where_never_available():
    x = np.asarray(cm.normalised_utility(jnp.array([0.3, 0.3]), jnp.array([3, 0]), 6))
    assert x[0] == pytest.approx(0.6) and np.isnan(x[1])
