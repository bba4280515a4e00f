"""FairSynergy fidelity (issue 17): the study's streams, its single pass, its seven table cases, the sweep files.

Float64 throughout (autouse ``jax.enable_x64``); the cvxpy references run with
exact power cones and tight tolerances.
"""

import warnings

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from experiments.fairsynergy import common, sweep, table
from fsjax import allocation as A
from fsjax.allocation import instances, reference, report


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


# ---------------------------------------------------------------- the study's stream


def literal_een(E, N):
    """The study's one-resource loop (simulations.feasibility_exp_EEN), transcribed draw by draw."""
    np.random.seed(42)
    out = []
    for _ in range(E):
        T = np.random.rand(1)[0]
        e, g = [np.random.rand(1)[0] / 10], [np.random.rand(1)[0]]
        for i in range(N):
            if i > 0:
                T += np.random.rand(1)[0]
                e.append(np.random.rand(1)[0] / 10)
                g.append(np.random.rand(1)[0])
            d = np.random.dirichlet(np.ones(i + 1), size=1)[0] * T
            out.append((T, np.array(e), np.array(g), d))
    return out


def literal_dl(E, N):
    """The study's two-resource loop (simulations.feasibility_exp) without its per-call re-seeding."""
    np.random.seed(42)
    out = []
    for _ in range(E):
        T, Eb = np.random.rand(1)[0], np.random.rand(1)[0]
        a, r, g2, g1 = ([np.random.rand(1)[0] / 100], [np.random.rand(1)[0] / 100], [np.random.rand(1)[0]],
                        [np.random.rand(1)[0]])
        for i in range(N):
            if i > 0:
                T += np.random.rand(1)[0]
                Eb += np.random.rand(1)[0]
                a.append(np.random.rand(1)[0] / 100)
                r.append(np.random.rand(1)[0] / 100)
                g2.append(np.random.rand(1)[0])
                g1.append(np.random.rand(1)[0])
            d_rho = np.random.dirichlet(np.ones(i + 1), size=1)[0] * Eb
            d_alpha = np.random.dirichlet(np.ones(i + 1), size=1)[0] * T
            out.append((T, Eb, *map(np.array, (a, r, g2, g1)), d_rho, d_alpha))
    return out


def test_one_resource_sweep_replays_the_study_stream_bit_for_bit():
    E, N = 3, 9
    inst, lit = instances.study_sweep(False, E, N), literal_een(E, N)
    for j in range(E):
        x = instances.random_split(inst, j)
        for i in range(N):
            T, e, g, d = lit[j * N + i]
            assert inst["budget"][j, i] == T
            np.testing.assert_array_equal(inst["e_init"][j, : i + 1], e)
            np.testing.assert_array_equal(inst["gamma"][j, : i + 1], g)
            np.testing.assert_array_equal(x[i, : i + 1], d)
            assert np.all(x[i, i + 1:] == 0)


def test_two_resource_sweep_replays_the_study_stream_bit_for_bit():
    E, N = 3, 9
    inst, lit = instances.study_sweep(True, E, N), literal_dl(E, N)
    for j in range(E):
        x = instances.random_split(inst, j)
        for i in range(N):
            T, Eb, a, r, g2, g1, d_rho, d_alpha = lit[j * N + i]
            assert inst["budget2"][j, i] == T and inst["budget1"][j, i] == Eb
            for key, v in (("init2", a), ("init1", r), ("g2", g2), ("g1", g1)):
                np.testing.assert_array_equal(inst[key][j, : i + 1], v, err_msg=key)
            np.testing.assert_array_equal(x[i, : i + 1, 0], d_rho)
            np.testing.assert_array_equal(x[i, : i + 1, 1], d_alpha)


# ---------------------------------------------------------------- the study's two-resource pass


@pytest.mark.parametrize("seed", range(5))
def test_study_pass_from_zero_extra_compute_equals_cvxpy_blocks(seed):
    rng = np.random.default_rng(seed)
    n = 6
    g1, g2 = rng.uniform(0.1, 0.9, n), rng.uniform(0.1, 0.9, n)
    init1, init2 = rng.uniform(0.001, 0.05, n), rng.uniform(0.001, 0.05, n)
    budget = rng.uniform(0.5, 3.0, 2)
    out = A.solve(A.CobbDouglas(*map(jnp.asarray, (g1, g2, init1, init2))), jnp.asarray(budget), method="study")
    # Clarabel's allocation is only as exact as its gap: at 1e-10 it is 3e-6 off
    # (fsjax's objective is then the higher one); at 1e-12 it agrees to 1e-7, even
    # where Clarabel calls its answer "optimal_inaccurate".
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Solution may be inaccurate")
        ref, status = reference.cvxpy_study_pass(g1, g2, init1, init2, budget, tol=1e-12)
    assert set(status) <= {"optimal", "optimal_inaccurate"}, status
    np.testing.assert_allclose(out.allocation, ref, atol=1e-6)
    u_ref = (ref[:, 0] + init1) ** g1 * (ref[:, 1] + init2) ** g2
    assert abs(float(out.objective) - u_ref.sum()) <= 1e-6 * u_ref.sum()
    assert int(out.iterations) == 1


def test_study_and_study_even_differ_and_joint_beats_both():
    rng = np.random.default_rng(5)
    n = 6
    cd = A.CobbDouglas(*(jnp.asarray(rng.uniform(lo, hi, n)) for lo, hi in ((0.1, 0.45),) * 2 + ((0.001, 0.05),) * 2))
    budget = jnp.array([1.2, 2.0])
    joint, zero, even = (A.solve(cd, budget, method=m) for m in ("joint", "study", "study_even"))
    assert not np.allclose(zero.allocation, even.allocation, atol=1e-4)
    assert float(joint.objective) >= max(float(zero.objective), float(even.objective)) - 1e-12
    np.testing.assert_allclose(joint.gap, zero.gap, rtol=1e-12)  # "joint" reports its gap to the study's pass
    np.testing.assert_allclose(even.gap, joint.objective - even.objective, rtol=1e-9)


# ---------------------------------------------------------------- the seven table scenarios


def test_every_reference_scenario_ships_as_an_allocate_file():
    assert len(common.SCENARIOS) == 7
    expected = {"hand": (0.7, 0.007, 0.007, 0.25, 0.25), "moreResource": (1.0, 0.007, 0.007, 0.25, 0.25),
                "oneAccHigher": (0.7, 0.8, 0.007, 0.25, 0.25), "bothAccHigher": (0.7, 0.3, 0.3, 0.25, 0.25),
                "oneHardHigher": (0.7, 0.007, 0.007, 0.5, 0.25), "bothHardHigher": (0.7, 0.007, 0.007, 0.5, 0.5),
                "saturated": (2.0, 0.007, 0.007, 0.25, 0.25)}
    assert set(expected) == set(common.SCENARIOS)
    for name, (b, e1, e2, g1, g2) in expected.items():
        agents = report.load_agents(common.scenario_path(name))
        assert agents.budget == b and agents.alpha == 0.0
        np.testing.assert_array_equal(agents.utility.e_init, [e1, e2])
        np.testing.assert_array_equal(agents.utility.gamma, [g1, g2])


@pytest.mark.parametrize("name", common.SCENARIOS)
def test_table_scenario_matches_cvxpy(name):
    res = table.solve_scenario(name)
    gap_x, gap_obj = table.gaps(res)
    assert res["converged"] and gap_x < table.ALLOCATION_TOL and gap_obj < table.OBJECTIVE_TOL
    pl, budget = table.load(name)
    g, e = np.asarray(pl.gamma), np.asarray(pl.e_init)
    x_ref, u_ref, p_ref, f_ref = res["cvxpy"]
    x, u, p, f = res["fairsynergy"]
    assert f >= f_ref - 1e-9 * f_ref  # never below the conic reference
    np.testing.assert_allclose(u, (x + e) ** g, rtol=1e-12)
    np.testing.assert_allclose(p, g * (x + e) ** (g - 1), rtol=1e-12)
    # Uniform: the even split, evaluated like cvxpy's answer, and never above it.
    xu, uu, pu, fu = res["uniform"]
    np.testing.assert_allclose(xu, budget / 2, rtol=1e-12)
    np.testing.assert_allclose(uu, (budget / 2 + e) ** g, rtol=1e-12)
    np.testing.assert_allclose(pu, g * (budget / 2 + e) ** (g - 1), rtol=1e-12)
    assert fu <= f_ref * (1 + 1e-9)


@pytest.mark.parametrize("name", common.SCENARIOS)
def test_table_scenario_envelope_dobjective_dbudget_is_the_multiplier(name):
    pl, budget = table.load(name)
    out = A.solve(pl, budget)
    grad = float(jax.jit(jax.grad(lambda b: A.solve(pl, b).objective))(budget))
    h = 1e-6
    fd = (float(A.solve(pl, budget + h).objective) - float(A.solve(pl, budget - h).objective)) / (2 * h)
    assert abs(grad - float(out.multiplier)) <= 1e-9 * abs(grad)
    assert abs(fd - float(out.multiplier)) <= 1e-6 * abs(fd)


# ---------------------------------------------------------------- the sweep files


def check_sweep_files(out, n_experiments, n_agents, study_pass_dominates=True):
    inst = {two: instances.study_sweep(two, n_experiments, n_agents) for two in (False, True)}
    for name, two in ((sweep.FILES["one"], False), (sweep.FILES["two"], True), (sweep.FILES["joint"], True)):
        res = np.load(out / name)
        assert res.dtype == np.float64 and res.shape == (6, n_agents), name
        assert np.all(res[3:] >= 0), name
        if study_pass_dominates or name != sweep.FILES["two"]:
            # The study's single pass is not optimal: over 2 experiments uniform beats
            # it at some sizes; over the study's 20 it never does.
            assert np.all(res[0] >= res[1] - 1e-12) and np.all(res[0] >= res[2] - 1e-12), name
        # Uniform and random recomputed here from the drawn instances, in numpy.
        sizes = np.arange(1, n_agents + 1)
        uni, rnd = np.zeros((n_experiments, n_agents)), np.zeros((n_experiments, n_agents))
        I = inst[two]
        for e in range(n_experiments):
            for n in sizes:
                if two:
                    r0, a0, g1, g2 = (I[k][e, :n] for k in ("init1", "init2", "g1", "g2"))
                    E_bar, T = I["budget1"][e, n - 1], I["budget2"][e, n - 1]
                    uni[e, n - 1] = np.mean((E_bar / n + r0) ** g1 * (T / n + a0) ** g2)
                    rho, alpha = I["dirichlet1"][e, n - 1, :n] * E_bar, I["dirichlet2"][e, n - 1, :n] * T
                    rnd[e, n - 1] = np.mean((rho + r0) ** g1 * (alpha + a0) ** g2)
                else:
                    e0, g, T = I["e_init"][e, :n], I["gamma"][e, :n], I["budget"][e, n - 1]
                    uni[e, n - 1] = np.mean((T / n + e0) ** g)
                    rnd[e, n - 1] = np.mean((I["dirichlet"][e, n - 1, :n] * T + e0) ** g)
        np.testing.assert_allclose(res[[1, 2, 4, 5]], [uni.mean(0), rnd.mean(0), uni.std(0), rnd.std(0)],
                                   rtol=1e-10, atol=1e-14, err_msg=name)
    one, dl, joint = (np.load(out / sweep.FILES[k]) for k in ("one", "two", "joint"))
    np.testing.assert_array_equal(dl[1:3], joint[1:3])
    assert np.all(joint[0] >= dl[0] - 1e-9)  # the joint solve ascends from the study's pass


def test_sweep_small_writes_the_study_layout(tmp_path):
    assert sweep.main(["--out", str(tmp_path), "--experiments", "2", "--agents", "12"]) == 0
    check_sweep_files(tmp_path, 2, 12, study_pass_dominates=False)


@pytest.mark.slow
def test_sweep_full_writes_the_study_files(tmp_path):
    assert sweep.main(["--out", str(tmp_path)]) == 0
    check_sweep_files(tmp_path, 20, 100)
