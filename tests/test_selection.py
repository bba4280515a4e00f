"""Tests for fsjax.selection: invariants, each strategy's law, fairness, jit/vmap."""

import pkgutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsjax import availability as av
from fsjax import metrics as mt
from fsjax import selection as sl

CONFIGS = {
    "full": {},
    "random": {},
    "aw_psp": {},
    "power_of_choice": {"d": 4},
    "fair_select": {"lam": 0.5},
}


def label_hist(c, num_labels=10, per_client=2, seed=0):
    """Each client holds `per_client` labels with 20 examples each."""
    rng = np.random.default_rng(seed)
    hist = np.zeros((c, num_labels), np.float32)
    for k in range(c):
        hist[k, rng.choice(num_labels, per_client, replace=False)] = 20.0
    return jnp.asarray(hist)


def history_state(c=12, seed=0):
    """A selector state after some made-up rounds, so scores differ."""
    rng = np.random.default_rng(seed)
    state = sl.init_state(label_hist(c, seed=seed))
    avail = rng.integers(0, 10, c)
    sel = np.minimum(avail, rng.integers(0, 6, c))
    part = np.minimum(sel, rng.integers(0, 6, c))
    return state._replace(rounds=jnp.int32(10), available=jnp.asarray(avail, jnp.int32),
                          selected=jnp.asarray(sel, jnp.int32), participated=jnp.asarray(part, jnp.int32),
                          missed=jnp.asarray(avail - sel, jnp.int32),
                          cum_utility=jnp.asarray(part * rng.uniform(0.2, 0.8, c), jnp.float32),
                          loss=jnp.asarray(rng.uniform(0, 3, c), jnp.float32))


# The CUP study's selectors (issue 16): their own states, tested in tests/test_cup.py.
CUP_CONFIGS = {"cup": {}, "fedavg_random": {}, "uniform_available": {}, "fairfedcs": {},
               "least_selected": {}, "inverse_availability": {}, "estimated_availability": {},
               "round_robin": {}}


def test_registry():
    assert set(sl.REGISTRY) == set(CONFIGS) | set(CUP_CONFIGS)


# Every name fsjax.selection offered as one module, before it became a package.
PUBLIC = ("REGISTRY", "Array", "Selection", "Feedback", "SelectorState", "Selector",
          "init_state", "update_state", "availability_estimate", "slot_mask", "selection_mask",
          "make_feedback", "round_slots", "full", "random", "aw_psp", "power_of_choice",
          "surrogate_utility", "fair_select_scores", "fair_select",
          # issue 16
          "CupState", "cup_scores", "dependent_rounding", "inclusion_probabilities",
          "oracle_maxmin_scores", *CUP_CONFIGS,
          # issue 19: the O(C) parallel sampler
          "SAMPLERS", "first_true", "systematic_sampling")


def test_package_reexports_every_public_name_and_registry_names_its_factories():
    assert sorted(sl.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert not isinstance(getattr(sl, name), types.ModuleType), name
    for name, factory in sl.REGISTRY.items():
        assert getattr(sl, name) is factory
        assert isinstance(factory(**{**CONFIGS, **CUP_CONFIGS}[name]), sl.Selector)


def test_no_submodule_is_named_like_a_reexported_name():
    # `import fsjax.selection.random as m` would give the factory, not a module.
    submodules = {m.name for m in pkgutil.iter_modules(sl.__path__)}
    assert submodules and not submodules & set(sl.__all__), submodules & set(sl.__all__)


KS = (1, 5, 12)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_never_unavailable_and_exactly_min_k_available(name):
    c, trials = 12, 64
    sel = sl.REGISTRY[name](**CONFIGS[name])
    rng = np.random.default_rng(0)
    # Availability from none to all, so some trials have fewer than K available.
    counts = np.arange(trials) % (c + 1)
    avail = np.zeros((trials, c), bool)
    for t, n in enumerate(counts):
        avail[t, rng.choice(c, n, replace=False)] = True
    state = history_state(c)

    # One compiled program for all K (compile time dominates this test).
    @jax.jit
    def run(a, keys):
        return [jax.vmap(lambda ai, key: sel.select(state, ai, key, k))(a, keys) for k in KS]

    outs = run(jnp.asarray(avail), jax.random.split(jax.random.key(1), trials))
    for k, out in zip(KS, outs):
        slots, valid = np.asarray(out.slots), np.asarray(out.valid)
        assert slots.shape == (trials, k) and slots.dtype == np.int32 and valid.dtype == bool
        for t in range(trials):
            n_valid = int(valid[t].sum())
            assert n_valid == min(k, counts[t]), (k, t)
            assert valid[t, :n_valid].all()  # valid slots come first
            chosen = slots[t, :n_valid]
            assert avail[t, chosen].all()  # never an unavailable client
            assert len(set(chosen.tolist())) == n_valid  # no client twice
            assert (slots[t, n_valid:] == 0).all()  # padding


def test_full_selects_every_available_client():
    sel = sl.full()
    state = sel.init(label_hist(6))
    avail = jnp.array([True, False, True, True, False, True])
    out = jax.jit(sel.select, static_argnums=3)(state, avail, jax.random.key(0), 6)
    np.testing.assert_array_equal(out.slots, [0, 2, 3, 5, 0, 0])
    np.testing.assert_array_equal(out.valid, [1, 1, 1, 1, 0, 0])


def _first_pick_freq(sel, state, avail, k, n=4000, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    out = jax.jit(jax.vmap(lambda key: sel.select(state, avail, key, k)))(keys)
    c = avail.shape[0]
    hits = np.zeros(c)
    first = np.zeros(c)
    np.add.at(hits, np.asarray(out.slots).ravel(), np.asarray(out.valid).ravel())
    np.add.at(first, np.asarray(out.slots[:, 0]), 1)
    return hits / n, first / n


def test_random_is_uniform_among_available():
    sel = sl.random()
    avail = jnp.array([True, True, False, True, True, True, False, True])
    incl, _ = _first_pick_freq(sel, history_state(8), avail, k=3)
    expected = np.where(np.asarray(avail), 3 / 6, 0.0)
    np.testing.assert_allclose(incl, expected, atol=0.03)


def test_aw_psp_draws_proportional_to_estimated_availability():
    sel = sl.aw_psp()
    state = sl.init_state(label_hist(4))._replace(
        rounds=jnp.int32(8), available=jnp.array([0, 2, 5, 8], jnp.int32))
    pi = (np.array([0, 2, 5, 8]) + 1) / 10  # Laplace: (a + 1) / (n + 2)
    np.testing.assert_allclose(sl.availability_estimate(state), pi, rtol=1e-6)
    _, first = _first_pick_freq(sel, state, jnp.ones(4, bool), k=2)
    np.testing.assert_allclose(first, pi / pi.sum(), atol=0.025)


def test_power_of_choice_picks_highest_loss_candidates():
    sel = sl.power_of_choice(d=8)
    state = sel.init(label_hist(8))._replace(
        loss=jnp.array([0.5, 3.0, 0.1, 2.0, 9.0, 1.0, 4.0, 0.2]))
    avail = jnp.array([True, True, True, True, False, True, True, True])
    out = sel.select(state, avail, jax.random.key(0), 3)
    # d >= available: every available client is a candidate, so it is the top-3 loss.
    np.testing.assert_array_equal(np.sort(out.slots), [1, 3, 6])
    # With d = K = 2 the candidate set is a data-size-weighted draw; client 0 holds
    # 9x the data of the others and is almost always a candidate.
    hist = np.full((4, 2), 5.0, np.float32)
    hist[0] = 45.0
    small = sl.power_of_choice(d=1)
    st = small.init(jnp.asarray(hist))
    incl, _ = _first_pick_freq(small, st, jnp.ones(4, bool), k=2)
    # P(0 among 2 successive draws) = 45/60 + (15/60)(45/55).
    assert abs(incl[0] - (0.75 + 0.25 * 45 / 55)) < 0.015


def test_update_state_matches_numpy():
    sel = sl.fair_select()
    state = sel.init(label_hist(5))
    rng = np.random.default_rng(3)
    tot = dict(a=np.zeros(5), s=np.zeros(5), p=np.zeros(5), m=np.zeros(5), u=np.zeros(5))
    for _ in range(4):
        a = rng.random(5) < 0.7
        s = a & (rng.random(5) < 0.5)
        p = s & (rng.random(5) < 0.8)
        u = rng.random(5).astype(np.float32)
        loss = rng.random(5).astype(np.float32)
        state = jax.jit(sel.update)(state, sl.Feedback(a, s, p, u, loss))
        tot["a"] += a; tot["s"] += s; tot["p"] += p; tot["m"] += a & ~s; tot["u"] += np.where(p, u, 0)
    assert int(state.rounds) == 4
    np.testing.assert_array_equal(state.available, tot["a"])
    np.testing.assert_array_equal(state.selected, tot["s"])
    np.testing.assert_array_equal(state.participated, tot["p"])
    np.testing.assert_array_equal(state.missed, tot["m"])
    np.testing.assert_allclose(state.cum_utility, tot["u"], rtol=1e-6)
    np.testing.assert_allclose(state.loss, loss)


def test_make_feedback_marks_failed_slots():
    avail = jnp.array([True, True, True, False])
    selection = sl.Selection(slots=jnp.array([2, 0, 0]), valid=jnp.array([True, True, False]))
    fb = sl.make_feedback(avail, selection, jnp.array([True, False, False]), jnp.zeros(4), jnp.zeros(4))
    np.testing.assert_array_equal(fb.selected, [True, False, True, False])
    np.testing.assert_array_equal(fb.participated, [True, False, False, False])


def test_slot_mask_matches_loop_over_slots():
    c, k = 7, 5
    rng = np.random.default_rng(2)
    slot_mask = jax.jit(sl.slot_mask, static_argnums=2)
    for _ in range(20):
        slots = rng.integers(0, c, k)  # repeats included
        mask = rng.random(k) < 0.5
        expected = np.zeros(c, bool)
        for s, m in zip(slots, mask):
            expected[s] |= m
        got = slot_mask(jnp.asarray(slots, jnp.int32), jnp.asarray(mask), c)
        assert got.dtype == bool
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(sl.selection_mask(sl.Selection(slots, mask), c), expected)


def test_round_slots_gives_full_participation_every_client():
    for name in sorted(CONFIGS):
        sel = sl.REGISTRY[name](**CONFIGS[name])
        assert sl.round_slots(sel, 12, 4) == (12 if name == "full" else 4), name


def test_surrogate_utility_matches_numpy():
    state = history_state(12, seed=4)
    part = np.asarray(state.participated)
    u = np.asarray(state.cum_utility) / np.maximum(part, 1)
    q = np.asarray(state.label_dist)
    has = part > 0
    expected = u.copy()
    for k in np.flatnonzero(~has):
        w = np.array([q[k] @ q[j] if has[j] else 0.0 for j in range(12)])
        expected[k] = (w * u).sum() / w.sum() if w.sum() > 0 else u[has].mean()
    assert (~has).any() and has.any()
    np.testing.assert_allclose(sl.surrogate_utility(state), expected, rtol=1e-5)
    # Before any history the surrogate is 0 for everyone.
    assert not np.asarray(sl.surrogate_utility(sl.init_state(label_hist(3)))).any()


def test_surrogate_uses_similar_label_sets():
    # Clients 0, 1 hold labels {0, 1}; client 2 holds {2}; client 3 holds {0, 2}.
    hist = jnp.array([[5, 5, 0], [5, 5, 0], [0, 0, 5], [5, 0, 5]], jnp.float32)
    state = sl.init_state(hist)._replace(participated=jnp.array([1, 0, 2, 0]),
                                         cum_utility=jnp.array([0.9, 0.0, 0.6, 0.0]))
    sur = np.asarray(sl.surrogate_utility(state))
    assert sur[1] == pytest.approx(0.9)  # same labels as client 0 only
    # Client 3 shares one label with each: weights <q3,q0> = 0.25, <q3,q2> = 0.5
    # (client 2 holds only the shared label, so it is the closer peer).
    assert sur[3] == pytest.approx((0.25 * 0.9 + 0.5 * 0.3) / 0.75)


def test_fair_select_scores_match_formula():
    state = history_state(12, seed=5)
    lam, mu = 0.5, 1.0
    pi = (np.asarray(state.available) + 1) / (10 + 2)
    v = np.asarray(state.cum_utility) + np.asarray(sl.surrogate_utility(state))
    d = (v.max() - v) / (v.max() - v.min())
    expected = (1 / pi) * (1 + lam * np.asarray(state.missed)) * (1 + mu * d)
    np.testing.assert_allclose(sl.fair_select_scores(state, lam, mu), expected, rtol=1e-5)
    np.testing.assert_allclose(sl.fair_select_scores(state, lam, 0.0),
                               (1 / pi) * (1 + lam * np.asarray(state.missed)), rtol=1e-5)


def _state_with(c, labels, **fields):
    hist = np.zeros((c, max(max(ls) for ls in labels) + 1), np.float32)
    for k, ls in enumerate(labels):
        hist[k, ls] = 10.0
    return sl.init_state(jnp.asarray(hist))._replace(
        rounds=jnp.int32(10), **{k: jnp.asarray(v) for k, v in fields.items()})


def test_fair_select_follows_score_without_label_conflict():
    # Everyone holds a distinct label, so coverage never interferes: pure score order.
    state = _state_with(5, [[0], [1], [2], [3], [4]],
                        available=np.array([9, 1, 5, 9, 3], np.int32),
                        missed=np.array([0, 0, 2, 6, 0], np.int32))
    scores = np.asarray(sl.fair_select_scores(state, 0.5))
    out = sl.fair_select(lam=0.5).select(state, jnp.ones(5, bool), jax.random.key(0), 4)
    np.testing.assert_array_equal(out.slots, np.argsort(-scores)[:4])


def test_fair_select_prefers_clients_adding_uncovered_labels():
    # Client 0 scores highest; client 1 scores next but only repeats label 0;
    # client 2 scores lowest yet adds label 1, so it comes second.
    state = _state_with(3, [[0], [0], [1]], available=np.array([0, 2, 8], np.int32))
    scores = np.asarray(sl.fair_select_scores(state, 0.5))
    assert scores[0] > scores[1] > scores[2]
    out = sl.fair_select().select(state, jnp.ones(3, bool), jax.random.key(0), 3)
    np.testing.assert_array_equal(out.slots, [0, 2, 1])
    plain = sl.fair_select(coverage=False).select(state, jnp.ones(3, bool), jax.random.key(0), 3)
    np.testing.assert_array_equal(plain.slots, [0, 1, 2])


def test_fair_select_favours_clients_behind_in_cumulative_utility():
    # Identical availability and misses; client 1 has received far less utility.
    state = _state_with(3, [[0], [0], [0]], available=np.array([5, 5, 5], np.int32),
                        participated=np.array([4, 4, 4], np.int32),
                        cum_utility=np.array([3.0, 0.5, 2.0], np.float32))
    out = sl.fair_select().select(state, jnp.ones(3, bool), jax.random.key(0), 1)
    assert int(out.slots[0]) == 1
    # mu = 0 removes the parity term: then it is a uniform tie.
    tied = sl.fair_select(mu=0.0)
    picks = {int(tied.select(state, jnp.ones(3, bool), jax.random.key(s), 1).slots[0]) for s in range(30)}
    assert picks == {0, 1, 2}


def test_fair_select_new_client_enters_like_its_label_peers():
    # Client 2 has no history; its peer (same labels) has low per-round utility,
    # so its projected cumulative utility is low and it is favoured over client 0.
    state = _state_with(3, [[0], [1], [1]], available=np.array([5, 5, 5], np.int32),
                        participated=np.array([2, 2, 0], np.int32),
                        cum_utility=np.array([1.6, 0.2, 0.0], np.float32))
    sur = np.asarray(sl.surrogate_utility(state))
    assert sur[2] == pytest.approx(0.1)
    out = sl.fair_select().select(state, jnp.array([True, False, True]), jax.random.key(0), 1)
    assert int(out.slots[0]) == 2


def _simulate(*strategies, seeds, rounds=200, c=40, k=4):
    """Jitted rounds: heterogeneous Markov availability, synthetic utility.

    Returns, per strategy, (participation gini, selection gap, total participations)
    over `seeds` seeds.
    """
    p_return = np.linspace(0.05, 0.8, c)
    p_drop = np.linspace(0.6, 0.1, c)
    model = av.markov(num_clients=c, p_drop=p_drop.tolist(), p_return=p_return.tolist())
    hist = label_hist(c, seed=1)
    base_acc = jnp.linspace(0.3, 0.7, c)

    def one(sel, key):
        def round_(carry, r):
            a_state, s_state, ever, key = carry
            key, k_av, k_sel, k_u = jax.random.split(key, 4)
            a_state, avail = model.step(a_state, k_av)
            selection = sel.select(s_state, avail, k_sel, k)
            utility = base_acc + 0.001 * r + 0.05 * jax.random.normal(k_u, (c,))
            fb = sl.make_feedback(avail, selection, jnp.zeros(k, bool), utility, 1.0 - utility)
            return (a_state, sel.update(s_state, fb), ever | avail, key), None

        k0, k1 = jax.random.split(key)
        carry = (model.init(k0), sel.init(hist), jnp.zeros(c, bool), k1)
        (_, s_state, ever, _), _ = jax.lax.scan(round_, carry, jnp.arange(rounds))
        return (mt.gini(s_state.participated),
                mt.participation_rate_gap(s_state.participated, rounds, ever),
                s_state.participated.sum())

    selectors = [sl.REGISTRY[name](**params) for name, params in strategies]
    run = jax.jit(jax.vmap(lambda key: [one(sel, key) for sel in selectors]))
    out = run(jax.random.split(jax.random.key(0), seeds))
    return [[np.asarray(x) for x in res] for res in out]


def test_fair_select_fairer_than_random_over_200_rounds():
    # Both strategies in one compiled program, on the same availability keys.
    fair, rand = _simulate(("fair_select", {"lam": 0.5}), ("random", {}), seeds=4)
    gini_f, gap_f, total_f = fair
    gini_r, gap_r, total_r = rand
    print(f"\nparticipation gini fair_select {gini_f.mean():.3f} vs random {gini_r.mean():.3f}; "
          f"selection gap {gap_f.mean():.3f} vs {gap_r.mean():.3f}")
    # Same availability process: both fill the same number of slots.
    np.testing.assert_array_equal(total_f, total_r)
    assert (gini_f < gini_r).all() and (gap_f < gap_r).all()
    assert gini_f.mean() < 0.75 * gini_r.mean()


def test_select_and_update_jit_vmap_equal_loop():
    # All selectors in one program: compile time, not run time, dominates here.
    selectors = {name: sl.REGISTRY[name](**CONFIGS[name]) for name in sorted(CONFIGS)}
    c, k = 10, 3
    hist = label_hist(c)

    def one(sel, key):
        k_av, k_sel, k2 = jax.random.split(key, 3)
        state = sel.init(hist)
        avail = jax.random.uniform(k_av, (c,)) < 0.6
        s = sel.select(state, avail, k_sel, k)
        state = sel.update(state, sl.make_feedback(avail, s, jnp.zeros(k, bool),
                                                   jnp.linspace(0, 1, c), jnp.linspace(1, 0, c)))
        s2 = sel.select(state, avail, k2, k)
        return s.slots, s.valid, s2.slots, state.missed

    def run(key):
        return {name: one(sel, key) for name, sel in selectors.items()}

    keys = jax.random.split(jax.random.key(1), 4)
    batched = jax.jit(jax.vmap(run))(keys)
    run_jit = jax.jit(run)
    for i, key in enumerate(keys):
        single = run_jit(key)
        for name in selectors:
            for got, want in zip(batched[name], single[name]):
                np.testing.assert_array_equal(got[i], want, err_msg=name)


def test_large_fair_select_compiles_and_runs():
    # C = 10,000 clients, K = 100: the greedy is a rolled loop, so this stays quick.
    c, k = 10_000, 100
    sel = sl.fair_select()
    state = sel.init(label_hist(c))
    avail = jax.random.uniform(jax.random.key(0), (c,)) < 0.3
    out = jax.jit(sel.select, static_argnums=3)(state, avail, jax.random.key(1), k)
    assert bool(out.valid.all()) and bool(avail[out.slots].all())
    assert len(set(np.asarray(out.slots).tolist())) == k
    # Round 0: every client has the same score, so labels decide: each pick
    # adds a new label while one is left, so 9 picks cover all 10 labels.
    covered = np.asarray(state.label_dist[out.slots[:9]] > 0).any(axis=0)
    assert covered.all()


@pytest.mark.parametrize("factory, kwargs, match", [
    (sl.fair_select, dict(lam=-0.1), r"lam=-0\.1: expected a finite number >= 0"),
    (sl.fair_select, dict(lam=float("nan")), r"lam=nan"),
    (sl.fair_select, dict(mu=-1), r"mu=-1"),
    (sl.power_of_choice, dict(d=0), r"d=0: expected an integer"),
    (sl.power_of_choice, dict(d=2.5), r"d=2\.5"),
])
def test_bad_factory_arguments(factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bad_select_arguments(name):
    sel = sl.REGISTRY[name](**CONFIGS[name])
    state = sel.init(label_hist(5))
    avail = jnp.ones(5, bool)
    with pytest.raises(ValueError, match=r"num_slots=6: expected 1 <= K <= number of clients C=5"):
        sel.select(state, avail, jax.random.key(0), 6)
    with pytest.raises(ValueError, match=r"num_slots=0"):
        sel.select(state, avail, jax.random.key(0), 0)
    with pytest.raises(ValueError, match=r"available has shape \(4,\)"):
        sel.select(state, jnp.ones(4, bool), jax.random.key(0), 2)
    with pytest.raises(ValueError, match=r"label_hist has shape \(5,\)"):
        sel.init(jnp.ones(5))
