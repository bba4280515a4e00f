"""The feasibility sweep: mean accuracy of FairSynergy, uniform and random from 1 to 100 agents.

Run from the repository root::

    python -m experiments.fairsynergy.sweep [--out DIR] [--experiments 20] [--agents 100]

20 experiments (numpy seed 42, see ``common.sweep_instances``) grow a system one
agent at a time; every new agent adds U(0,1) to each budget. One-resource variant:
power laws with initial resources U(0,1)/10; two-resource variant: Cobb-Douglas
with initial resources U(0,1)/100. All sizes of one experiment are solved in ONE
batched, masked call. Writes ``sweep_one.csv``, ``sweep_two.csv``, ``sweep.png``.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.fairsynergy import common  # noqa: E402
from fsjax import allocation  # noqa: E402

REPORT_SIZES = (1, 10, 25, 50, 100)


@jax.jit
def _baselines(utility, budget, mask, key):
    """Mean accuracy of uniform and random for every instance of a batch."""
    keys = jax.random.split(key, budget.shape[0])

    def one(u, b, m, k):
        return [jnp.sum(fn(u, b, mask=m, key=k).utilities) / jnp.sum(m)
                for fn in (allocation.uniform, allocation.random)]

    return jax.vmap(one)(utility, budget, mask, keys)


def run_variant(two, n_experiments, n_agents):
    """Returns (methods, acc[method, experiment, size], seconds per batched solve, diagnostics)."""
    inst = common.sweep_instances(two, n_experiments, n_agents)
    methods = ("fairsynergy", "study-pass", "uniform", "random") if two else ("fairsynergy", "uniform", "random")
    acc = np.zeros((len(methods), n_experiments, n_agents))
    times, bad, gaps = [], 0, []
    for e in range(n_experiments):
        utility, budget, mask = common.sweep_batch(inst, e)
        counts = mask.sum(1)
        t0 = time.perf_counter()
        out = allocation.solve_batch(utility, budget, mask=mask)
        out.objective.block_until_ready()
        times.append(time.perf_counter() - t0)
        bad += int(np.sum(~np.asarray(out.converged)))
        acc[0, e] = np.asarray(out.utilities.sum(1) / counts)
        k = 1
        if two:
            study = allocation.solve_batch(utility, budget, mask=mask, method="study")
            acc[1, e] = np.asarray(study.utilities.sum(1) / counts)
            gaps.append(np.asarray(out.gap))
            k = 2
        base = _baselines(utility, budget, mask, jax.random.fold_in(jax.random.key(42), e))
        acc[k, e], acc[k + 1, e] = (np.asarray(b) for b in base)
    # The first call compiles; report the steady state separately.
    diag = {"compile_s": times[0], "solve_s": float(np.median(times[1:])) if len(times) > 1 else times[0],
            "not_converged": bad, "max_gap": float(np.max(gaps)) if gaps else None}
    return methods, acc, diag


def plot(results, path):
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4))
    for ax, (title, (methods, acc, _)) in zip(np.atleast_1d(axes), results.items()):
        sizes = np.arange(1, acc.shape[2] + 1)
        for m, name in enumerate(methods):
            mean, std = acc[m].mean(0), acc[m].std(0)
            ax.plot(sizes, mean, label=name)
            ax.fill_between(sizes, mean - std, mean + std, alpha=0.2)
        ax.set_xlabel("number of agents")
        ax.set_ylabel("mean accuracy (mean +- std over experiments)")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--experiments", type=int, default=20)
    p.add_argument("--agents", type=int, default=100)
    args = p.parse_args(argv)
    out = common.out_dir(args.out)
    results = {}
    with jax.enable_x64(True):
        variants = ((False, "one", "one resource (power law)"), (True, "two", "two resources (Cobb-Douglas)"))
        for two, tag, title in variants:
            methods, acc, diag = run_variant(two, args.experiments, args.agents)
            results[title] = (methods, acc, diag)
            rows = [(e + 1, s + 1, name, acc[m, e, s]) for m, name in enumerate(methods)
                    for e in range(acc.shape[1]) for s in range(acc.shape[2])]
            common.write_csv(out / f"sweep_{tag}.csv", ["experiment", "n_agents", "method", "mean_accuracy"], rows)
    plot(results, out / "sweep.png")
    for title, (methods, acc, diag) in results.items():
        print(f"\n{title}: {acc.shape[1]} experiments x {acc.shape[2]} sizes")
        print(f"  batched solve per experiment ({acc.shape[2]} instances, one call): {diag['solve_s'] * 1e3:.1f} ms "
              f"(first call incl. compile {diag['compile_s']:.2f} s); not converged: {diag['not_converged']}")
        if diag["max_gap"] is not None:
            print(f"  joint minus study-pass objective: max {diag['max_gap']:.3e}")
        print("  " + f"{'agents':>6} " + " ".join(f"{m:>20}" for m in methods))
        for n in REPORT_SIZES:
            if n <= acc.shape[2]:
                cells = [f"{acc[m, :, n - 1].mean():.4f} +- {acc[m, :, n - 1].std():.4f}" for m in range(len(methods))]
                print("  " + f"{n:>6} " + " ".join(f"{c:>20}" for c in cells))
        last = acc[:, :, -1].mean(1)
        gains = ", ".join(f"{(last[0] / last[m] - 1) * 100:+.1f}% vs {methods[m]}" for m in range(1, len(methods)))
        print(f"  FairSynergy at {acc.shape[2]} agents: {gains}")
    print(f"\nwrote {out / 'sweep_one.csv'}, {out / 'sweep_two.csv'} and {out / 'sweep.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
