import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsjax import allocation_loop, config, simulation
from tests.compile_count import count_compilations

QUICK = "experiments/quick.yaml"


@pytest.mark.parametrize("seed", range(5))
def test_round_allocation_keeps_budget_and_bounds(seed):
    rng = np.random.default_rng(seed)
    valid = jnp.asarray(rng.random(8) < 0.8).at[0].set(True)
    x = jnp.asarray(rng.dirichlet(np.ones(8))) * valid
    x = jnp.minimum(x / x.sum() * 37.0, 12.0)            # a feasible real allocation
    steps = np.asarray(allocation_loop.round_allocation(x, 37.0, 12, jnp.asarray(valid)))
    assert steps.sum() == round(float(x.sum())) <= 37
    assert (steps[~np.asarray(valid)] == 0).all() and (steps <= 12).all()
    assert (np.abs(steps - np.asarray(x)) < 1.0).all()


def _cfg(name, alpha=0.0, *extra):
    return config.load(QUICK, overrides=(f"allocation.name={name}", f"allocation.alpha={alpha}",
                                         "rounds=6", *extra))


@pytest.mark.slow
def test_uniform_allocation_equals_plain_steps():
    plain = simulation.run(_cfg("none"))
    uniform = simulation.run(_cfg("uniform"))   # longer scan, masked steps
    np.testing.assert_allclose(plain.metrics["accuracy_mean"], uniform.metrics["accuracy_mean"],
                               atol=1e-6)


# alpha=5 takes the same compiled path with another value: the fast lane runs alpha=0.
@pytest.mark.parametrize("alpha", [0.0, pytest.param(5.0, marks=pytest.mark.slow)])
def test_fairsynergy_spends_the_budget_without_recompiling(alpha):
    cfg = _cfg("fairsynergy", alpha, "allocation.min_steps=1", "allocation.max_steps=12")
    sim = simulation.Simulation(cfg)
    state, metrics = sim.step(sim.init())                # round 1 compiles
    local_steps = [metrics["local_steps"]]
    with count_compilations() as compiled:
        for _ in range(5):
            state, metrics = sim.step(state)
            local_steps.append(metrics["local_steps"])
        jax.block_until_ready((state, metrics))
    assert compiled == []
    np.testing.assert_array_equal(local_steps, 5 * 5)    # K * local.steps, every round
    trained = np.asarray(state.alloc_state.trained)
    assert trained.sum() == 6 * 25
    assert state.alloc_state.count.sum() == state.ledger.participated.sum()


def test_max_min_alpha_gives_the_worst_off_client_more_steps():
    cfg = _cfg("fairsynergy", 8.0, "allocation.max_steps=15")
    sim = simulation.Simulation(cfg)
    state = sim.init()
    curves = state.alloc_state._replace(utility=jnp.linspace(0.1, 0.9, 20))
    slots, valid = jnp.arange(5), jnp.ones(5, bool)
    steps = jax.jit(sim.allocator.steps)(curves, slots, valid, jax.random.key(0))
    assert int(steps.sum()) == 25
    assert steps[0] == steps.max() and steps[4] == steps.min() and steps[0] > steps[4]
    # Utilitarian (alpha 0) with equal prior curves spreads by marginal gain instead.
    uti = simulation.Simulation(_cfg("fairsynergy", 0.0, "allocation.max_steps=15"))
    s0 = jax.jit(uti.allocator.steps)(curves, slots, valid, jax.random.key(0))
    assert int(s0.sum()) == 25 and not np.array_equal(np.asarray(s0), np.asarray(steps))


def test_allocation_config_errors():
    with pytest.raises(ValueError, match="allocation.min_steps"):
        _cfg("fairsynergy", 0.0, "allocation.min_steps=6")
    with pytest.raises(ValueError, match="allocation.max_steps"):
        _cfg("fairsynergy", 0.0, "allocation.max_steps=4")
    with pytest.raises(ValueError, match="allocation.name"):
        _cfg("greedy")
