"""Large populations: index-list clients, the ``sample`` partition, sampled evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsjax import config, evaluation, simulation
from tests.compile_count import count_compilations

QUICK = "experiments/quick.yaml"


def _sim(*overrides):
    return simulation.Simulation(config.load(QUICK, overrides=overrides))


def _three_rounds_compiling_once(sim):
    """Runs three rounds; the second and third compile nothing. Returns (state, metrics)."""
    state, m = sim.step(sim.init())
    with count_compilations() as compiled:
        for _ in range(2):
            state, m = sim.step(state)
        jax.block_until_ready(state)
    assert compiled == [] and int(state.round) == 3
    return state, m


def test_sampled_evaluation_equals_full_when_every_client_is_drawn():
    """evaluate(all) == merge(evaluate(ids)) when ids cover all C clients (any order, repeats)."""
    sim = _sim()
    fd, C = sim.data, sim.num_clients
    params = sim.init().params
    full = sim.evaluate(params, *fd.gather(jnp.arange(C), test=True))
    perm = jax.random.permutation(jax.random.key(1), C).astype(jnp.int32)
    for ids in (perm, jnp.concatenate([jnp.array([3, 3, 0], jnp.int32), perm])):
        part = evaluation.merge(jnp.full(C, -1.0), jnp.full(C, -1.0), ids,
                                sim.evaluate(params, *fd.gather(ids, test=True)))
        np.testing.assert_array_equal(part.accuracy, full.accuracy)
        np.testing.assert_array_equal(part.loss, full.loss)
    # Per-class loss over the same rows, summed in another order (M = C, no repeats).
    part = sim.evaluate(params, *fd.gather(perm, test=True))
    np.testing.assert_allclose(part.class_loss, full.class_loss, rtol=1e-5)
    np.testing.assert_array_equal(part.class_count, full.class_count)


def test_eval_clients_at_least_c_is_the_full_evaluation_bit_for_bit():
    a = simulation.run(config.load(QUICK, overrides=("rounds=3",)))
    b = simulation.run(config.load(QUICK, overrides=("rounds=3", "eval.clients=20")))
    for k in a.metrics:
        if k != "round_seconds":
            np.testing.assert_array_equal(a.metrics[k], b.metrics[k], err_msg=k)


def test_sampled_evaluation_updates_only_the_drawn_and_selected_clients():
    sim = _sim("eval.clients=3", "partition.num_clients=40", "partition.name=iid")
    state0 = sim.init()
    state, _ = sim.step(state0)
    evaluated = np.asarray(state.loss) != 0   # a cross-entropy is never exactly 0
    _, plan, _ = jax.jit(sim.plan_round)(state0, sim.data)
    chosen = np.asarray(plan.slots)[np.asarray(plan.valid)]
    assert evaluated[chosen].all()          # the selected clients' utility is fresh
    assert 1 <= evaluated.sum() <= 5 + 3    # K + M at most; the rest keep their last value (0)
    full = _sim("eval.clients=3", "eval.full_every=2", "partition.num_clients=40",
                "partition.name=iid")
    s = full.init()
    for _ in range(2):
        s, _ = full.step(s)
    assert (np.asarray(s.loss) > 0).all()   # round 2 evaluated every client


def test_sample_population_of_100k_clients_runs_end_to_end():
    cfg = config.load(QUICK, overrides=(
        "rounds=3", "partition.name=sample", "partition.num_clients=100000",
        "partition.examples_per_client=20", "eval.clients=50", "selection.clients_per_round=10",
        "availability.name=markov"))
    sim = simulation.Simulation(cfg)
    fd = sim.data
    assert fd.index.shape == (0,) and fd.n.shape == (100_000,)   # O(C) integers per client
    assert fd.width == 16 and fd.test_width == 4
    assert float(fd.label_hist.sum()) == 100_000 * 16
    state, m = _three_rounds_compiling_once(sim)
    assert float(m["selected"]) == 10 and np.isfinite(float(m["train_loss"]))
    # The same client gets the same rows in every round (and in a new simulation).
    x1 = sim.data.gather(jnp.array([12345]))[0]
    again = simulation.Simulation(cfg).data.gather(jnp.array([12345]))[0]
    np.testing.assert_array_equal(x1, again)
    hist = simulation.run(cfg, sim=sim)
    assert hist.metrics["accuracy_mean"].shape == (3,)


def test_trace_assignment_is_deterministic_and_matches_a_loop():
    from fsjax.availability import device_traces as dt

    mat = np.random.default_rng(0).random((7, 3)) < 0.5
    dev, off = dt.assign_traces(jax.random.key(2), 50, 3, 7)
    dev2, off2 = dt.assign_traces(jax.random.key(2), 50, 3, 7)
    np.testing.assert_array_equal(dev, dev2)
    np.testing.assert_array_equal(off, off2)
    assert set(np.asarray(dev).tolist()) == {0, 1, 2}
    for t in range(9):
        got = np.asarray(dt.trace_step(jnp.asarray(mat), dev, off, t))
        want = [mat[(int(o) + t) % 7, int(d)] for d, o in zip(dev, off)]
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow   # ~60 s on 2 loaded cores: the part timer compiles ~15 programs
def test_cup_systematic_population_round_and_bench_parts():
    """The population benchmark's round (CUP, systematic sampler, Markov availability) runs,
    compiles once, picks exactly K available clients, and its part timer covers every part."""
    from bench import population as bp

    sets = bp.overrides(bp.QUICK["mlp"], 3000, 20) + ["selection.clients_per_round=7"]
    cfg = config.load(None, overrides=tuple(sets))
    assert cfg.selection.name == "cup" and cfg.selection.params["sampler"] == "systematic"
    sim = simulation.Simulation(cfg)
    state, m = _three_rounds_compiling_once(sim)
    assert float(m["selected"]) == min(7, float(m["available"]))
    assert 0.0 <= float(m["participation_gini"]) <= 1.0
    parts = bp.measure_parts(sim, state, repeats=1)
    assert set(parts) == set(bp.PART_NAMES) and all(v > 0 for v in parts.values())
