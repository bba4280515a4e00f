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


def _gini_reference(p):
    p = np.asarray(p, np.float64)
    return np.abs(p[:, None] - p[None, :]).sum() / (2 * p.size * p.sum()) if p.sum() else 0.0


def test_count_gini_equals_pairwise_reference_and_sorted_formula():
    """Histogram path (span < bins), sort fallback (span >= bins), floats: all equal."""
    rng = np.random.default_rng(4)
    gini = jax.jit(cm.count_gini, static_argnums=1)
    for trial in range(30):
        n = (1, 13, 400)[trial % 3]                           # few shapes: few compilations
        span = int(rng.choice([1, 3, 50, 2000, 100_000]))
        p = rng.integers(0, span + 1, n) + int(rng.integers(0, 5))
        if trial % 7 == 0:
            p[:] = 0 if trial % 2 else 5                      # all equal (incl. all zero)
        want = _gini_reference(p)
        for bins in (16, cm.GINI_BINS):
            got = float(gini(jnp.asarray(p, jnp.int32), bins))
            assert got == pytest.approx(want, rel=2e-6, abs=1e-7), (trial, span, bins)
        assert float(cm._gini(jnp.asarray(p, jnp.float32))) == pytest.approx(want, rel=1e-5,
                                                                             abs=1e-6)
        assert float(cm.count_gini(jnp.asarray(p, jnp.float32))) == pytest.approx(
            want, rel=1e-5, abs=1e-6)


def test_count_gini_many_clients_is_accurate():
    """10^5 counts in f32: the pair sum has no cancellation (small Gini, many ties)."""
    rng = np.random.default_rng(0)
    p = rng.poisson(40, 100_000)
    want = _gini_numpy_sorted(p)
    assert float(cm.count_gini(jnp.asarray(p, jnp.int32))) == pytest.approx(want, rel=1e-5)


def _gini_numpy_sorted(p):
    s = np.sort(np.asarray(p, np.float64))
    n = s.size
    return (2 * np.arange(1, n + 1) - n - 1) @ s / (n * s.sum())


def test_smallest_mean_equals_sorted_mean():
    rng = np.random.default_rng(6)
    f = jax.jit(cm.smallest_mean, static_argnums=1)
    for trial in range(24):
        n = (1, 9, 300)[trial % 3]
        kind = (trial // 3) % 4
        x = {0: rng.normal(0, 1, n), 1: rng.integers(-3, 3, n).astype(float),   # many ties
             2: rng.lognormal(0, 5, n) * rng.choice([-1, 1], n),                 # wide range
             3: np.zeros(n)}[kind].astype(np.float32)
        if kind == 3 and n > 2:
            x[: n // 2] = -0.0                                                    # -0 vs +0
        for k in {1, max(1, math.ceil(0.1 * n)), n}:
            want = np.sort(x.astype(np.float64))[:k].mean()
            got = float(f(jnp.asarray(x), k))
            assert got == pytest.approx(want, rel=1e-5, abs=1e-6 * (1 + float(np.abs(x).max()))), \
                (trial, k)


def test_metrics_equal_the_sorting_formulas_on_random_inputs():
    """cup_metrics' sort-free gini and worst10 equal the sorted ones (the formulas it had)."""
    rng = np.random.default_rng(8)
    for trial in range(8):
        n, t = (10, 3000)[trial % 2], int(rng.integers(1, 60))
        a = rng.integers(0, t + 1, n)
        p = np.minimum(a, rng.integers(0, t + 1, n))
        u = rng.normal(0.2, 0.5, n).astype(np.float32)
        out = metrics.cup_metrics(jnp.asarray(p), jnp.asarray(a), jnp.asarray(p),
                                  jnp.asarray(u), 5, t)
        x = np.asarray(cm.normalised_utility(jnp.asarray(u), jnp.asarray(a), t))
        xz = np.where(np.isnan(x), 0.0, x)
        old_worst = float(jnp.mean(jnp.sort(jnp.asarray(xz, jnp.float32))[:math.ceil(0.1 * n)]))
        old_gini = float(cm._gini(jnp.asarray(p, jnp.float32)))
        assert float(out["worst10_utility"]) == pytest.approx(old_worst, rel=1e-5, abs=1e-6)
        assert float(out["participation_gini"]) == pytest.approx(old_gini, rel=1e-5, abs=1e-6)
