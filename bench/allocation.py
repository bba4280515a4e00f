"""FairSynergy allocation: one batched JAX solve vs the study's loop of cvxpy solves.

Run from the repository root::

    python -m bench.allocation [--quick] [--repeats N]

Workload: the one-resource feasibility sweep, drawn as the study draws it
(``fsjax.allocation.instances.study_sweep``: one numpy stream seeded 42, systems
of 1..100 agents). The baseline is the study's own path
(``fsjax.allocation.reference.cvxpy_study``): a fresh
cvxpy problem per system size with one ``cp.power`` term per agent (Clarabel),
solved one after another. FairSynergy solves the same systems in ONE batched,
masked call (``fsjax.allocation.solve_batch``, float64 like cvxpy).

Compile time is measured and reported separately; every timed JAX call ends
with ``block_until_ready``. Times are medians over repeats with their spread.
``--quick`` runs cvxpy on every 10th size of experiment 1 only (and JAX on the
same systems). The last line is ``speedup_vs_cvxpy=<ratio>`` (cvxpy loop time /
batched JAX time, same systems).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import jax
import numpy as np

from fsjax import allocation
from fsjax.allocation import instances, reference

N_EXPERIMENTS, N_MAX, BIG = 20, 100, 10_000


def _stats(times):
    t = np.asarray(times)
    return {"median": float(np.median(t)), "min": float(t.min()), "max": float(t.max()), "n": len(t)}


def _fmt(s, unit=1e3, suffix="ms"):
    return (f"{s['median'] * unit:10.3f} {suffix}  (min {s['min'] * unit:.3f}, max {s['max'] * unit:.3f}, "
            f"n={s['n']})")


def _time_jax(fn, repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, _stats(times)


def _cvxpy_loop(inst, e, sizes):
    """The study's loop; returns (seconds, objectives)."""
    t0 = time.perf_counter()
    objs = []
    for n in sizes:
        g, e0 = inst["gamma"][e, :n], inst["e_init"][e, :n]
        x, status = reference.cvxpy_study(g, e0, inst["budget"][e, n - 1])
        if status != "optimal":
            raise RuntimeError(f"cvxpy status {status} at n={n}")
        objs.append(float(np.sum((np.clip(x, 0, None) + e0) ** g)))
    return time.perf_counter() - t0, np.asarray(objs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="cvxpy on every 10th size of one experiment")
    p.add_argument("--repeats", type=int, default=None, help="cvxpy repeats (default 3); JAX repeats 30")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*approximated.*")  # cvxpy's SOC notes, one per agent
    cvx_repeats = args.repeats or 3
    sizes = np.arange(10, N_MAX + 1, 10) if args.quick else np.arange(1, N_MAX + 1)
    inst = instances.study_sweep(False, N_EXPERIMENTS, N_MAX)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {'quick' if args.quick else 'full'} mode")
    print(f"cvxpy baseline: experiment 1, {len(sizes)} system sizes ({sizes[0]}..{sizes[-1]} agents), "
          f"{cvx_repeats} repeats; JAX: the same systems in one batched call")

    rows = []
    with jax.enable_x64(True):
        # -- JAX on the whole sweep: 20 experiments x 100 sizes, one call per experiment --
        batches = [instances.sweep_batch(inst, e) for e in range(N_EXPERIMENTS)]
        t0 = time.perf_counter()
        jax.block_until_ready(allocation.solve_batch(*batches[0][:2], mask=batches[0][2]).objective)
        sweep_first = time.perf_counter() - t0
        sweep_times = []
        for _ in range(10):
            t0 = time.perf_counter()
            for ub, bb, mb in batches:
                jax.block_until_ready(allocation.solve_batch(ub, bb, mask=mb).objective)
            sweep_times.append(time.perf_counter() - t0)
        # -- JAX on the same systems as cvxpy (one batched call; in full mode the shape
        #    of experiment 1's batch, so its compile was paid above) ------------------------
        u, b, m = instances.sweep_batch(inst, 0, sizes)
        same_first, same = _time_jax(lambda: allocation.solve_batch(u, b, mask=m).objective, 30)
        jax_out = allocation.solve_batch(u, b, mask=m)
        sweep = _stats(sweep_times)
        # -- one 10,000-agent system, float64 and float32 -------------------------------
        rng = np.random.RandomState(7)
        big = allocation.PowerLaw(rng.uniform(size=BIG), rng.uniform(size=BIG) / 10)
        big_budget = float(rng.uniform(size=BIG).sum())
        big64_first, big64 = _time_jax(lambda: allocation.solve(big, big_budget).objective, 30)
        big_conv = bool(allocation.solve(big, big_budget).converged)
    big32_first, big32 = _time_jax(lambda: allocation.solve(big, big_budget).objective, 30)

    # -- cvxpy: the study's loop, warmed up once (imports, first-call setup) ------------
    reference.cvxpy_study(inst["gamma"][0, :3], inst["e_init"][0, :3], 1.0)
    cvx_times = []
    for _ in range(cvx_repeats):
        seconds, cvx_obj = _cvxpy_loop(inst, 0, sizes)
        cvx_times.append(seconds)
    cvx = _stats(cvx_times)
    gap = (np.asarray(jax_out.objective) - cvx_obj) / np.abs(cvx_obj)
    ratio = cvx["median"] / same["median"]

    rows = [
        ("cvxpy loop, same systems", _fmt(cvx, 1, "s ")),
        ("JAX batched, same systems", _fmt(same)),
        ("  first call" + (" incl. compile" if args.quick else " (compiled by the sweep)"), f"{same_first:10.3f} s"),
        (f"JAX full sweep ({N_EXPERIMENTS} exps x {N_MAX} sizes)", _fmt(sweep)),
        ("  first call incl. compile", f"{sweep_first:10.3f} s"),
        (f"cvxpy full sweep, extrapolated", f"{cvx['median'] * N_EXPERIMENTS * (5050 / sizes.sum()):10.1f} s  "
                                           f"(x{N_EXPERIMENTS} experiments, by agent count)"),
        (f"one {BIG:,}-agent solve, float64", _fmt(big64)),
        ("  first call incl. compile", f"{big64_first:10.3f} s   converged={big_conv}"),
        (f"one {BIG:,}-agent solve, float32", _fmt(big32)),
        ("  first call incl. compile", f"{big32_first:10.3f} s"),
        ("objective JAX vs cvxpy (relative)", f"min {gap.min():+.2e}, max {gap.max():+.2e}  "
                                              f"(> 0: JAX higher)"),
        ("JAX converged", f"{int(np.sum(jax_out.converged))}/{len(sizes)}"),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"speedup_vs_cvxpy={ratio:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
