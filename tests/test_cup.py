"""Tests for the CUP scheduler and the CUP study's baselines (REFERENCE.md B.2, B.3)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsjax import selection as sl
from fsjax.selection import cup_scheduler as cs
from fsjax.selection import population_baselines as pb


def water_fill_reference(w, avail, m):
    """The study's fixed_size_inclusion_probabilities, in plain Python."""
    keys = [k for k in range(len(w)) if avail[k]]
    cap = min(m, len(keys))
    out = np.zeros(len(w))
    if cap == 0:
        return out
    pos = {k: max(0.0, float(w[k])) for k in keys}
    if sum(pos.values()) == 0:
        pos = {k: 1.0 for k in keys}
    rem, budget = set(keys), float(cap)
    while rem:
        s = budget / sum(pos[k] for k in rem)
        sat = {k for k in rem if s * pos[k] >= 1.0}
        if not sat:
            for k in rem:
                out[k] = s * pos[k]
            break
        for k in sat:
            out[k] = 1.0
        budget -= len(sat)
        rem -= sat
    return out


# ------------------------------------------------------------------ water-filling


def test_water_filling_hand_example():
    q = sl.inclusion_probabilities(jnp.array([8.0, 2.0, 1.0]), jnp.ones(3, bool), 2)
    np.testing.assert_allclose(q, [1.0, 2 / 3, 1 / 3], rtol=1e-6)


def test_water_filling_unavailable_get_zero_and_small_budgets():
    avail = jnp.array([True, False, True, True])
    w = jnp.array([1.0, 50.0, 1.0, 2.0])
    np.testing.assert_allclose(sl.inclusion_probabilities(w, avail, 1), [0.25, 0, 0.25, 0.5])
    np.testing.assert_allclose(sl.inclusion_probabilities(w, avail, 10), [1, 0, 1, 1])
    np.testing.assert_allclose(sl.inclusion_probabilities(w, jnp.zeros(4, bool), 2), 0)
    # all-zero (or negative) weights count as equal
    np.testing.assert_allclose(sl.inclusion_probabilities(-w, avail, 2), [2 / 3, 0, 2 / 3, 2 / 3],
                               rtol=1e-6)
    # fsjax: B left over for zero-weight clients is spread evenly (the study divides by 0)
    np.testing.assert_allclose(
        sl.inclusion_probabilities(jnp.array([1.0, 0.0, 0.0]), jnp.ones(3, bool), 2),
        [1.0, 0.5, 0.5])


def test_water_filling_random_weights_match_reference():
    rng = np.random.default_rng(0)
    fill = jax.jit(sl.inclusion_probabilities)
    c = 24   # one shape, one compilation; availability and m vary
    for trial in range(60):
        w = rng.lognormal(0, 1.5, c).astype(np.float32)
        avail = rng.random(c) < rng.uniform(0.05, 1.0)
        m = int(rng.integers(1, c + 2))
        q = np.asarray(fill(jnp.asarray(w), jnp.asarray(avail), m))
        cap = min(m, int(avail.sum()))
        assert q.sum() == pytest.approx(cap, abs=1e-4), trial
        assert (q >= 0).all() and (q <= 1).all() and (q[~avail] == 0).all()
        np.testing.assert_allclose(q, water_fill_reference(w, avail, m), atol=1e-5)
        # below saturation q is proportional to the weight
        frac = (q < 1 - 1e-6) & avail
        if frac.sum() >= 2:
            ratio = q[frac] / w[frac]
            np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
        # saturated clients have weights no smaller than any unsaturated one
        sat = (q >= 1 - 1e-6) & avail
        if sat.any() and frac.any():
            assert w[sat].min() >= w[frac].max() * (1 - 1e-5)


# ------------------------------------------------------------------ dependent rounding


SAMPLERS = {"pivotal": cs.dependent_rounding, "systematic": cs.systematic_sampling}


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("q", [
    [1.0, 2 / 3, 1 / 3],
    [0.1, 0.9, 0.5, 0.5, 0.0, 1.0, 0.25, 0.75],
    [0.3, 0.3, 0.4, 0.2, 0.8],
])
def test_dependent_rounding_exact_size_and_marginals(q, sampler):
    q = np.asarray(q, np.float32)
    n = 20_000
    keys = jax.random.split(jax.random.key(7), n)
    draws = np.asarray(jax.jit(jax.vmap(SAMPLERS[sampler], in_axes=(0, None)))(keys, q))
    assert (draws.sum(axis=1) == round(q.sum())).all()
    freq = draws.mean(axis=0)
    se = np.sqrt(q * (1 - q) / n)
    assert (np.abs(freq - q) <= 4 * se + 1e-9).all(), (freq, q)
    # integral q are deterministic
    assert draws[:, q == 1.0].all() and not draws[:, q == 0.0].any()


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_dependent_rounding_after_water_filling_always_exact_size(sampler):
    rng = np.random.default_rng(3)
    fill = jax.jit(sl.inclusion_probabilities, static_argnums=2)
    rnd = jax.jit(SAMPLERS[sampler])
    c = 120
    for trial in range(40):
        avail = rng.random(c) < rng.uniform(0.0, 0.3)
        w = rng.lognormal(0, 2, c).astype(np.float32)
        q = fill(jnp.asarray(w), jnp.asarray(avail), 10)
        chosen = np.asarray(rnd(jax.random.key(trial), q))
        assert chosen.sum() == min(10, avail.sum()) and avail[chosen].all(), trial


def test_systematic_exact_size_on_many_random_and_near_integral_q():
    """Size == round(sum q) on every draw: water-filled q (float sums off by ~1e-6),
    q with entries within 1e-7 of 0 or 1, exact halves, and a single fractional pair."""
    rng = np.random.default_rng(11)
    fill = jax.jit(sl.inclusion_probabilities, static_argnums=2)
    many = jax.jit(jax.vmap(cs.systematic_sampling, in_axes=(0, None)))
    cases = []
    for c, m in ((7, 3), (50, 5), (1000, 50), (5000, 400)):
        for _ in range(6):
            w = rng.lognormal(0, rng.uniform(0.1, 3), c).astype(np.float32)
            avail = rng.random(c) < rng.uniform(0.05, 1.0)
            cases.append(np.asarray(fill(jnp.asarray(w), jnp.asarray(avail), m)))
    cases += [np.array([1 - 1e-7, 1e-7, 0.5, 0.5, 1.0, 0.0], np.float32),
              np.array([1 - 3e-6, 3e-6, 0.5, 0.5], np.float32),
              np.full(4096, 1 / 4096, np.float32),
              np.full(1000, 0.05, np.float32),                 # sum 50 only up to f32 rounding
              np.r_[np.full(999, 1e-7), 1 - 999e-7].astype(np.float32),
              np.ones(5, np.float32), np.zeros(5, np.float32),
              # sums far from an integer (not what water-filling gives): still round(sum q)
              np.full(3, 0.5, np.float32), np.full(3, 0.3, np.float32),
              np.array([0.9, 0.9, 0.45], np.float32)]
    for i, q in enumerate(cases):
        draws = np.asarray(many(jax.random.split(jax.random.key(i), 200), jnp.asarray(q)))
        want = round(float(np.sum(q.astype(np.float64))))
        assert (draws.sum(axis=1) == want).all(), (i, want, np.unique(draws.sum(axis=1)))
        assert not draws[:, q <= 0].any() and draws[:, q >= 1].all()


def test_systematic_fixed_point_marginals_exact_to_1e6_relative():
    """Given its random key, a client's chance is exactly Q_k / 2^32 (the start is a
    uniform u32); averaged over keys Q_k / 2^32 must equal q_k n / sum q to ~1e-6."""
    c = 3000
    rng = np.random.default_rng(5)
    w = rng.lognormal(0, 2, c).astype(np.float32)
    q = sl.inclusion_probabilities(jnp.asarray(w), jnp.asarray(rng.random(c) < 0.7), 40)
    frac = (q > 0) & (q < 1 - 1e-6)

    @jax.jit
    def fixed(key):
        keys = jax.random.bits(key, (6,), jnp.uint32)
        pos, _ = cs._random_positions(keys, c)
        big = cs._fixed_point_q(q, frac, pos, keys)
        return big, jnp.sum(big, dtype=jnp.uint32)

    bigs, sums = jax.vmap(fixed)(jax.random.split(jax.random.key(0), 400))
    assert (np.asarray(sums) == 0).all()            # an exact multiple of 2^32 every time
    got = np.asarray(bigs, np.float64).mean(axis=0) / 2.0 ** 32
    qd = np.asarray(q, np.float64)
    f = np.asarray(frac)
    want = qd[f] * round(qd[f].sum()) / qd[f].sum()
    # per key, every Q_k is q_k 2^32 up or down by < 1 unit plus its share of R
    np.testing.assert_allclose(got[f], want, rtol=1e-6, atol=2.0 ** -32)
    assert (got[~f] == 0).all()


def test_systematic_positions_are_a_permutation_and_change_with_the_key():
    for c in (1, 2, 3, 1000, 4097):
        a, bits = cs._random_positions(jax.random.bits(jax.random.key(0), (6,), jnp.uint32), c)
        b, _ = cs._random_positions(jax.random.bits(jax.random.key(1), (6,), jnp.uint32), c)
        a, b = np.asarray(a), np.asarray(b)
        assert len(set(a.tolist())) == c and a.max() < 2 ** bits and 2 ** bits < 2 * max(c, 2)
        assert c < 1000 or (a != b).mean() > 0.99


def test_systematic_marginals_with_tiny_q_and_random_order():
    """Many small q (C = 2000, K = 20): frequencies within 4 SE over 20,000 draws, and
    index-neighbours are not anti-correlated (the order is random, not by index)."""
    c, k, n = 2000, 20, 20_000
    rng = np.random.default_rng(2)
    q = sl.inclusion_probabilities(jnp.asarray(rng.lognormal(0, 1, c), jnp.float32),
                                   jnp.ones(c, bool), k)
    draws = np.asarray(jax.jit(jax.vmap(cs.systematic_sampling, in_axes=(0, None)))(
        jax.random.split(jax.random.key(3), n), q))
    assert (draws.sum(axis=1) == k).all()
    qd = np.asarray(q, np.float64)
    freq = draws.mean(axis=0)
    se = np.sqrt(qd * (1 - qd) / n)
    assert (np.abs(freq - qd) <= 4 * se + 1e-9).mean() > 0.999   # 4 SE: ~0.006 % outside
    # equal q = 1/2 in index order would make 2i and 2i+1 exclusive; a random order does not
    half = np.asarray(jax.jit(jax.vmap(cs.systematic_sampling, in_axes=(0, None)))(
        jax.random.split(jax.random.key(4), 4000), jnp.full(64, 0.5)))
    both = (half[:, 0::2] & half[:, 1::2]).mean()
    assert 0.2 < both < 0.3                              # ~ 1/4 x 32/31


def test_systematic_size_at_a_million_clients():
    c = 10**6
    rng = np.random.default_rng(0)
    avail = jnp.asarray(rng.random(c) < 0.75)
    w = jnp.asarray(rng.lognormal(0, 1.5, c), jnp.float32)
    for k in (50, 1000):
        q = sl.inclusion_probabilities(w, avail, k)
        for seed in range(3):
            chosen = np.asarray(cs.systematic_sampling(jax.random.key(seed), q))
            assert chosen.sum() == k and np.asarray(avail)[chosen].all()


def test_first_true_equals_nonzero():
    rng = np.random.default_rng(0)
    for c, k in ((10, 3), (1000, 50), (1000, 1000)):
        mask = jnp.asarray(rng.random(c) < 0.1)
        n = int(mask.sum())
        got = np.asarray(cs.first_true(mask, k))
        want = np.asarray(jnp.nonzero(mask, size=k)[0])
        np.testing.assert_array_equal(got[:min(n, k)], want[:min(n, k)])


# ------------------------------------------------------------------ CUP


def test_cup_scores_and_oracle_formulas():
    pi = jnp.array([0.0, 0.25, 1.0])
    debt = jnp.array([3.0, 0.0, 10.0])
    np.testing.assert_allclose(sl.cup_scores(pi, debt),
                               [100 * 1.3, 1 / 0.251, 1 / 1.001 * 2.0], rtol=1e-6)
    pi_o = np.array([0.0, 0.5, 1.0])
    u, p = np.array([1.0, 0.0, 3.0]), np.array([2, 0, 3])
    pi_ = np.maximum(pi_o, 1e-3)
    mu = np.maximum(u / np.maximum(p, 1), 1e-3)
    tau = min(mu.min(), min(2, pi_.sum()) / (pi_ / mu).sum())
    np.testing.assert_allclose(sl.oracle_maxmin_scores(pi_o, u, p, 2), tau / mu, rtol=1e-5)


def _feedback(avail, selected, part, utility):
    c = len(avail)
    return sl.Feedback(jnp.asarray(avail), jnp.asarray(selected), jnp.asarray(part),
                       jnp.asarray(utility, jnp.float32), jnp.zeros(c))


def test_cup_four_round_hand_example():
    """pi, debt and utility crediting over four rounds, hand-computed.

    Client 0 is always available and participates in rounds 0, 2; client 1 is
    available in rounds 0, 1 only and is selected in round 1 but its update is
    lost (selected, not participated); client 2 is never available.
    """
    sel = sl.cup(lam=0.1)
    st = sel.init(jnp.ones((3, 2)))
    A = [[1, 1, 0], [1, 1, 0], [1, 0, 0], [1, 0, 0]]
    S = [[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]]
    P = [[1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]]
    acc = [[0.1, 0.2, 0.1], [0.3, 0.1, 0.1], [0.6, 0.5, 0.1], [0.4, 0.4, 0.2]]
    # pi_k(t) after observing round t: counts incl. round t over t + 1
    pi_hand = [[1, 1, 0], [1, 1, 0], [1, 2 / 3, 0], [1, 2 / 4, 0]]
    # debt d_k(t) used at round t: rounds < t not participated
    debt_hand = [[0, 0, 0], [0, 1, 1], [1, 2, 2], [1, 3, 3]]
    for t in range(4):
        avail = jnp.asarray(A[t], bool)
        np.testing.assert_allclose(cs.availability_now(st.base, avail), pi_hand[t], rtol=1e-6)
        np.testing.assert_array_equal(st.base.rounds - st.base.participated, debt_hand[t])
        st = sel.update(st, _feedback(np.asarray(A[t], bool), np.asarray(S[t], bool),
                                      np.asarray(P[t], bool), acc[t]))
    # accuracy_gain: 0 in round 0; client 0 credited in rounds 0 (0) and 2 (0.6 - 0.3)
    np.testing.assert_allclose(st.utility, [0.3, 0.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(st.base.selected, [2, 1, 0])
    np.testing.assert_array_equal(st.base.participated, [2, 0, 0])
    np.testing.assert_array_equal(st.base.available, [4, 2, 0])
    # debt after 4 rounds: 2, 4, 4 (unavailable rounds add debt too)
    np.testing.assert_array_equal(st.base.rounds - st.base.participated, [2, 4, 4])
    # a gain given by the round replaces accuracy_gain
    st2 = sel.update(st, sl.Feedback(*_feedback(np.ones(3, bool), np.ones(3, bool),
                                                np.array([True, True, False]), [0, 0, 0])[:5],
                                     gain=jnp.array([0.5, -0.25, 9.0])))
    np.testing.assert_allclose(st2.utility, [0.8, -0.25, 0.0], atol=1e-6)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_cup_select_uses_water_filled_scores_and_returns_probs(sampler):
    sel = sl.cup(lam=0.1, sampler=sampler)
    st = sel.init(jnp.ones((5, 2)))
    base = st.base._replace(rounds=jnp.int32(4), available=jnp.array([4, 1, 0, 2, 4]),
                            participated=jnp.array([2, 0, 0, 1, 4]))
    st = st._replace(base=base)
    avail = jnp.array([True, True, True, False, True])
    pi = (np.array([4, 1, 0, 2, 4]) + np.asarray(avail)) / 5
    debt = 4 - np.array([2, 0, 0, 1, 4])
    score = np.minimum(1 / (pi + 1e-3), 100) * (1 + 0.1 * debt)
    q = water_fill_reference(score, np.asarray(avail), 2)
    n = 4000
    keys = jax.random.split(jax.random.key(0), n)
    out = jax.jit(jax.vmap(lambda k: sel.select(st, avail, k, 2)))(keys)
    assert np.asarray(out.valid).all()
    slots, probs = np.asarray(out.slots), np.asarray(out.probs)
    np.testing.assert_allclose(probs, q[slots], rtol=1e-5)
    freq = np.bincount(slots.ravel(), minlength=5) / n
    se = np.sqrt(q * (1 - q) / n)
    assert (np.abs(freq - q) <= 4 * se + 1e-9).all(), (freq, q)
    assert (slots[:, 0] < slots[:, 1]).all()   # distinct, in client order


def test_cup_oracle_maxmin_and_few_available():
    sel = sl.cup(scheduler="oracle_maxmin")
    st = sel.init(jnp.ones((4, 2)))
    out = sel.select(st, jnp.array([False, True, False, False]), jax.random.key(0), 3)
    np.testing.assert_array_equal(out.valid, [True, False, False])
    assert int(out.slots[0]) == 1 and float(out.probs[0]) == 1.0
    np.testing.assert_array_equal(out.probs[1:], 0)


SELECTORS = {"cup": {}, "cup_oracle": {"scheduler": "oracle_maxmin"},
             "cup_systematic": {"sampler": "systematic"}, "uniform_available": {},
             "fairfedcs": {"m": 3}, "least_selected": {}, "inverse_availability": {},
             "estimated_availability": {}, "round_robin": {}}


def _make(name):
    return sl.REGISTRY["cup" if name.startswith("cup") else name](**SELECTORS[name])


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_new_selectors_pick_min_k_available_distinct_clients(name):
    c, k, rounds = 9, 3, 12
    sel = _make(name)
    rng = np.random.default_rng(1)

    @jax.jit
    def step(state, avail, key, util):
        s = sel.select(state, avail, key, k)
        fb = sl.make_feedback(avail, s, jnp.zeros(k, bool), util, 1.0 - util)
        return s, sel.update(state, fb)

    state = sel.init(jnp.ones((c, 2)))
    for t in range(rounds):
        avail = rng.random(c) < (t % 4) / 3    # from none to all available
        s, state = step(state, jnp.asarray(avail), jax.random.key(t),
                        jnp.asarray(rng.random(c), jnp.float32))
        slots, valid = np.asarray(s.slots), np.asarray(s.valid)
        n = int(valid.sum())
        assert n == min(k, avail.sum()) and valid[:n].all(), (t, n)
        assert avail[slots[:n]].all() and len(set(slots[:n].tolist())) == n
        assert (slots[n:] == 0).all()


def test_fedavg_random_draws_from_whole_population():
    sel = sl.fedavg_random()
    st = sel.init(jnp.ones((6, 2)))
    avail = jnp.array([True, False, True, False, False, False])
    keys = jax.random.split(jax.random.key(2), 6000)
    out = jax.jit(jax.vmap(lambda k: sel.select(st, avail, k, 3)))(keys)
    slots, valid, intent = map(np.asarray, (out.slots, out.valid, out.intent))
    assert intent.all()
    np.testing.assert_array_equal(valid, np.asarray(avail)[slots])   # S = 1, P = A
    # valid (available) slots first
    assert (np.diff(valid.astype(int), axis=1) <= 0).all()
    assert all(len(set(r)) == 3 for r in slots.tolist())
    freq = np.bincount(slots.ravel(), minlength=6) / len(keys)
    np.testing.assert_allclose(freq, 0.5, atol=0.03)   # K / C for every client


def test_uniform_available_equals_random():
    st = sl.init_state(jnp.ones((7, 2)))
    avail = jnp.array([True, False, True, True, False, True, True])
    for s in range(5):
        a = sl.uniform_available().select(st, avail, jax.random.key(s), 3)
        b = sl.random().select(st, avail, jax.random.key(s), 3)
        np.testing.assert_array_equal(a.slots, b.slots)
        np.testing.assert_array_equal(a.valid, b.valid)


def test_simple_schedulers_orders():
    st = sl.init_state(jnp.ones((5, 2)))._replace(
        rounds=jnp.int32(4), available=jnp.array([4, 1, 2, 1, 0]),
        selected=jnp.array([3, 0, 1, 0, 0]))
    avail = jnp.array([True, True, True, True, False])
    key = jax.random.key(0)
    # pi(t) = (a + A) / 5 = [1, .4, .6, .4, 0]
    assert sl.inverse_availability().select(st, avail, key, 3).slots.tolist() == [1, 3, 2]
    assert sl.estimated_availability().select(st, avail, key, 3).slots.tolist() == [0, 2, 1]
    assert sl.least_selected().select(st, avail, key, 3).slots.tolist() == [1, 3, 2]


def test_round_robin_cycles_over_available():
    sel = sl.round_robin()
    st = sel.init(jnp.ones((5, 2)))
    seq = []
    for avail in ([1, 1, 1, 1, 1], [1, 0, 1, 1, 1], [1, 1, 0, 1, 1], [1, 1, 1, 1, 1]):
        avail = jnp.asarray(avail, bool)
        s = sel.select(st, avail, jax.random.key(0), 2)
        seq.append(s.slots.tolist())
        st = sel.update(st, sl.make_feedback(avail, s, jnp.zeros(2, bool), jnp.zeros(5),
                                             jnp.zeros(5)))
    assert seq == [[0, 1], [2, 3], [4, 0], [1, 2]]


def test_fairfedcs_queue_and_reputation_updates():
    sel = sl.fairfedcs(sigma=1.0, rho=0.9, m=2)
    st = sel.init(jnp.ones((4, 2)))
    fb = sl.Feedback(jnp.ones(4, bool), jnp.array([True, True, False, False]),
                     jnp.array([True, False, False, False]), jnp.zeros(4), jnp.zeros(4),
                     loss_before=jnp.array([2.0, 1.5, 0.0, 0.0]),
                     local_loss=jnp.array([1.0, 1.0, 0.0, 0.0]))
    st = sel.update(st, fb)
    # Q <- max(0, Q + 2/4 - S)
    np.testing.assert_allclose(st.queue, [0.0, 0.0, 0.5, 0.5])
    # r <- 0.9 r + 0.1 max(0, F - loss) for participants only
    np.testing.assert_allclose(st.reputation, [0.1, 0.0, 0.0, 0.0], rtol=1e-6)
    out = sel.select(st, jnp.ones(4, bool), jax.random.key(0), 2)
    assert out.slots.tolist() == [2, 3]           # Psi = [0.1, 0, 0.5, 0.5], ties by index
    # the budget can come from the round instead of the factory
    st2 = sl.fairfedcs().update(sel.init(jnp.ones((4, 2))), fb._replace(budget=jnp.int32(2)))
    np.testing.assert_allclose(st2.queue, [0.0, 0.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="fairfedcs needs the round budget"):
        sl.fairfedcs().update(sel.init(jnp.ones((4, 2))), fb)


def test_new_selectors_jit_vmap_equal_loop():
    c, k = 8, 3
    sels = {name: _make(name) for name in SELECTORS}
    sels["fedavg_random"] = sl.fedavg_random()

    def one(sel, key):
        k_av, k_sel, k2 = jax.random.split(key, 3)
        state = sel.init(jnp.ones((c, 2)))
        avail = jax.random.uniform(k_av, (c,)) < 0.6
        s = sel.select(state, avail, k_sel, k)
        state = sel.update(state, sl.make_feedback(avail, s, jnp.zeros(k, bool),
                                                   jnp.linspace(0, 1, c), jnp.linspace(1, 0, c)))
        s2 = sel.select(state, avail, k2, k)
        return s.slots, s.valid, s2.slots, s2.valid

    def run(key):
        return {name: one(sel, key) for name, sel in sels.items()}

    keys = jax.random.split(jax.random.key(1), 3)
    batched = jax.jit(jax.vmap(run))(keys)
    for i, key in enumerate(keys):
        single = jax.jit(run)(key)
        for name in sels:
            for got, want in zip(batched[name], single[name]):
                np.testing.assert_array_equal(got[i], want, err_msg=name)


@pytest.mark.parametrize("factory, kwargs, match", [
    (sl.cup, dict(lam=-1), r"lam=-1: expected a finite number >= 0"),
    (sl.cup, dict(eps=0), r"eps=0: expected a finite number > 0"),
    (sl.cup, dict(clip=math.inf), r"clip=inf"),
    (sl.cup, dict(scheduler="greedy"), r"scheduler='greedy': expected one of"),
    (sl.cup, dict(sampler="poisson"), r"sampler='poisson': expected one of"),
    (sl.fairfedcs, dict(rho=1.5), r"rho=1\.5: expected a finite number >= 0 and <= 1"),
    (sl.fairfedcs, dict(m=0), r"m=0: expected None or an integer budget >= 1"),
])
def test_bad_factory_arguments(factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)


@pytest.mark.parametrize("name", ["cup", "fairfedcs", "round_robin", "fedavg_random"])
def test_bad_select_arguments(name):
    sel = sl.REGISTRY[name]()
    state = sel.init(jnp.ones((5, 2)))
    with pytest.raises(ValueError, match=r"num_slots=6: expected 1 <= K"):
        sel.select(state, jnp.ones(5, bool), jax.random.key(0), 6)
    with pytest.raises(ValueError, match=r"available has shape \(4,\)"):
        sel.select(state, jnp.ones(4, bool), jax.random.key(0), 2)


def test_module_names_do_not_shadow_factories():
    assert callable(sl.cup) and not hasattr(pb, "__path__")
    assert sl.cup is cs.cup and sl.round_robin is pb.round_robin
