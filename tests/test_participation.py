"""Participation accounting (REFERENCE B.1 steps 2, 4, 8-11) on a hand-computed example,
and the round's use of it: A, S and P kept apart, the Horvitz-Thompson context, the
CUP metrics in every round for every selector."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsjax import config, fair_aggregation, participation as pt, simulation

# 3 clients, 4 rounds. Client 2 is selected but unavailable in round 0, client 1 in
# round 1; client 1 is selected and available in round 2 but its update failed.
A = [[1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 1, 1]]
S = [[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 1, 1]]
P = [[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]]
ACC = [[0.4, 0.3, 0.1], [0.5, 0.35, 0.3], [0.45, 0.4, 0.3], [0.5, 0.5, 0.2]]


def _replay(name, surrogate=None):
    led, prev, estimates = pt.init(3), jnp.zeros(3), []
    for t in range(4):
        estimates.append(np.asarray(pt.availability_estimate(led, jnp.array(A[t], bool), t)))
        g = pt.gain(name, first_round=t == 0, accuracy=jnp.array(ACC[t]), prev_accuracy=prev,
                    ledger=led)
        led = pt.record(led, t=t, available=jnp.array(A[t], bool),
                        selected=jnp.array(S[t], bool), participated=jnp.array(P[t], bool),
                        gain=g, accuracy=jnp.array(ACC[t]), surrogate=surrogate)
        prev = jnp.array(ACC[t])
    return led, estimates


def test_counts_debt_and_availability_estimate_by_hand():
    led, est = _replay("accuracy_gain")
    assert led.available.tolist() == [3, 3, 3]
    assert led.selected.tolist() == [2, 3, 3]        # selected-but-unavailable counts in S
    assert led.participated.tolist() == [2, 1, 2]    # ... but not in P
    assert pt.debt(led, 4).tolist() == [2, 3, 2]
    # pi_k(t) includes round t: before round 2 the ledger holds rounds 0, 1.
    np.testing.assert_allclose(est[0], [1, 1, 0])
    np.testing.assert_allclose(est[1], [1, 0.5, 0.5])
    np.testing.assert_allclose(est[2], [1, 2 / 3, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(est[3], [3 / 4, 3 / 4, 3 / 4])


def test_accuracy_gain_credited_only_on_participation():
    led, _ = _replay("accuracy_gain")
    # r0: first round, no gain. r1: client 2 +0.2. r2: client 0 -0.05 (signed).
    # r3: client 1 +0.1 (0.4 -> 0.5), client 2 -0.1; client 0's +0.05 is not credited.
    np.testing.assert_allclose(led.utility, [-0.05, 0.1, 0.1], atol=1e-6)
    np.testing.assert_allclose(pt.normalised_utility(led, 4), [-0.05 / 0.75, 0.1 / 0.75, 0.1 / 0.75],
                               rtol=1e-5)
    np.testing.assert_allclose(led.cum_accuracy, [0.85, 0.5, 0.5], atol=1e-6)


def test_accuracy_gain_since_last_participation():
    led, _ = _replay("accuracy_gain_since_last")
    # Only client 0's second participation has a previous one: 0.45 - 0.4 clipped to 0.01;
    # client 2's second (0.2 after 0.3) is clipped to 0.
    np.testing.assert_allclose(led.utility, [0.01, 0.0, 0.0], atol=1e-7)


def test_surrogate_decays_from_the_last_real_increment():
    led, _ = _replay("accuracy_gain", surrogate=(1.0, 0.1))
    e = math.exp(-0.1)
    np.testing.assert_allclose(led.surrogate, [-0.05 * e, 0.0, 0.2 * e], atol=1e-6)
    plain, _ = _replay("accuracy_gain")
    np.testing.assert_array_equal(led.utility, plain.utility)   # never touches u
    assert not np.any(plain.surrogate)


def test_loss_reduction_is_clipped_at_zero():
    g = pt.gain("loss_reduction", first_round=False, accuracy=jnp.zeros(3),
                prev_accuracy=jnp.zeros(3), ledger=pt.init(3),
                loss_before=jnp.array([2.0, 1.0, 0.0]), local_loss=jnp.array([1.5, 1.2, 0.0]))
    np.testing.assert_allclose(g, [0.5, 0.0, 0.0])
    with pytest.raises(ValueError, match="utility name"):
        pt.gain("nope", first_round=False, accuracy=jnp.zeros(1), prev_accuracy=jnp.zeros(1),
                ledger=pt.init(1))


def _quick(*sets):
    return config.load("experiments/quick.yaml", overrides=("rounds=2", *sets))


def test_fedavg_random_selects_unavailable_clients_without_training_them():
    cfg = _quick("selection.name=fedavg_random", "availability.name=bernoulli",
                 "availability.p=0.3", "rounds=4", "engine.mode=loop")
    hist = simulation.run(cfg)
    led = hist.state.ledger
    # S counts every chosen client, P only the available ones that trained.
    assert np.all(hist.metrics["selected"] == 5)
    assert np.all(hist.metrics["participants"] <= hist.metrics["selected"])
    assert hist.metrics["participants"].sum() < hist.metrics["selected"].sum()
    assert int(led.selected.sum()) == 20 and int(led.participated.sum()) == \
        int(hist.metrics["participants"].sum())
    assert np.all(np.asarray(led.participated) <= np.asarray(led.selected))
    assert np.all(np.asarray(led.participated) <= np.asarray(led.available))


def test_horvitz_thompson_gets_the_rounds_probabilities_and_estimates():
    cfg = _quick("selection.name=cup", "aggregation.name=horvitz_thompson",
                 "availability.name=bernoulli", "availability.p=0.6", "engine.mode=loop")
    sim = simulation.Simulation(cfg)
    state = sim.init()
    state, _ = sim.step(state)            # round 0: the ledger now has history
    after, plan, shards = sim.plan_round(state, sim.data)
    result, reported = sim.backend.train(after, plan, shards)
    new, _ = sim.finish_round(after, plan, result, sim.data, reported)
    # CUP picks exactly min(K, available) clients; each slot carries its client's q.
    valid, probs = np.asarray(plan.valid), np.asarray(plan.probs)
    assert valid.sum() == min(5, int(plan.available.sum()))
    assert np.all((probs[valid] > 0) & (probs[valid] <= 1)) and not np.any(probs[~valid])
    pi = (np.asarray(state.ledger.available) + np.asarray(plan.available)) / 2.0
    m = np.asarray(fair_aggregation.ht_multipliers(plan.probs, jnp.asarray(pi)[plan.slots],
                                                   plan.valid, cfg.partition.num_clients))
    expect = jax.tree.map(lambda p, d: p + np.tensordot(m, np.asarray(d), axes=1),
                          state.params, result.delta)
    for got, want in zip(jax.tree.leaves(new.params), jax.tree.leaves(expect)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


NEW_SELECTORS = ("cup", "fedavg_random", "uniform_available", "fairfedcs", "least_selected",
                 "inverse_availability", "estimated_availability", "round_robin")


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_SELECTORS)
def test_every_study_selector_logs_the_cup_metrics_every_round(name):
    from fsjax.metrics import CUP_METRIC_NAMES
    agg = ("aggregation.name=horvitz_thompson",) if name == "cup" else ()
    hist = simulation.run(_quick(f"selection.name={name}", "availability.name=markov",
                                 "engine.mode=vmap", *agg))
    for key in CUP_METRIC_NAMES:
        assert hist.metrics[key].shape == (2,) and np.all(np.isfinite(hist.metrics[key])), key


def test_label_set_accuracy_comes_from_one_pass_over_the_test_set():
    cfg = _quick("partition.name=label_ring", "partition.split_test=0", "rounds=1",
                 "eval.client_accuracy=label_set", "data.test_subset=300", "engine.mode=loop")
    sim = simulation.Simulation(cfg)
    state, m = sim.step(sim.init())
    x, y, _ = (np.asarray(a) for a in sim._test)
    correct = np.argmax(np.asarray(sim.model.apply(state.params, x[0])), -1) == y[0]
    hist = np.asarray(sim.data.label_hist)
    want = [correct[np.isin(y[0], np.flatnonzero(h > 0))].mean() for h in hist]
    np.testing.assert_allclose(state.accuracy, want, rtol=1e-5)
    assert float(m["accuracy_global"]) == pytest.approx(correct.mean(), rel=1e-6)


def test_the_global_test_set_is_an_argument_of_the_round_not_a_constant():
    """Label modes read ``FederatedData.eval_set``: a new test set of the same shape changes
    ``accuracy_global`` as it should and compiles nothing (a folded constant would ignore it)."""
    import dataclasses

    from tests.compile_count import count_compilations

    cfg = _quick("partition.name=label_ring", "partition.split_test=0", "rounds=2",
                 "eval.client_accuracy=labels", "data.test_subset=300")
    sim = simulation.Simulation(cfg)
    x, y, n = sim.data.eval_set
    assert x.shape[1] == 300
    state, _ = sim.step(sim.init())
    after, m = sim.step(state)
    pred = np.argmax(np.asarray(sim.model.apply(after.params, x[0])), -1)
    flipped = (y + 1) % sim.num_classes     # every label changed
    sim.data = dataclasses.replace(sim.data, eval_set=(x, flipped, n))
    with count_compilations() as compiled:
        _, m2 = sim.step(state)
    assert compiled == []
    assert float(m["accuracy_global"]) == pytest.approx(np.mean(pred == np.asarray(y[0])))
    assert float(m2["accuracy_global"]) == pytest.approx(np.mean(pred == np.asarray(flipped[0])))
