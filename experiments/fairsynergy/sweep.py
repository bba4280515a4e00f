"""The feasibility sweep, drawn as the study draws it: mean accuracy from 1 to 100 agents.

Run from the repository root::

    python -m experiments.fairsynergy.sweep [--out DIR] [--experiments 20] [--agents 100]

Both variants replay the study's ONE legacy numpy stream (``np.random.seed(42)``
once; the random baseline's Dirichlet draws interleaved; see
``fsjax.allocation.instances.study_sweep``). Each experiment's 100 systems are one
padded, masked batch solved in ONE ``solve_batch`` call per method. Writes, in the
study's layout (float64, shape (6, n_agents): rows 0-2 the mean over the
experiments of FairSynergy, uniform, random; rows 3-5 their standard deviations,
ddof 0):

* ``EEN_Feasibility_Results_R100.npy`` -- one resource (power law).
* ``DL_Feasibility_Results_R100.npy`` -- two resources (Cobb-Douglas); FairSynergy
  is the study's method, ``solve(..., method="study")``: data with compute held at
  zero extra, then compute.
* ``DL_Feasibility_Joint_R100.npy`` -- the same with FairSynergy = the joint solve
  (its summed accuracy is the study pass's objective plus the reported ``gap``).

plus ``sweep_one.csv``, ``sweep_two.csv`` (every experiment and size) and ``sweep.png``.
Baselines use the correct Cobb-Douglas (data's exponent on data); the study's
swapped evaluation is printed beside them.
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
from fsjax.allocation import instances  # noqa: E402

REPORT_SIZES = (1, 10, 25, 50, 100)
FILES = {"one": "EEN_Feasibility_Results_R100.npy", "two": "DL_Feasibility_Results_R100.npy",
         "joint": "DL_Feasibility_Joint_R100.npy"}


@jax.jit
def _mean_accuracy(utility, x, mask):
    """Mean utility over the valid agents of each system: f[b]."""
    u = jax.vmap(lambda u, x: u.value(x))(utility, x)
    return jnp.sum(jnp.where(mask, u, 0.0), 1) / jnp.sum(mask, 1)


def _uniform_split(budget, mask):
    n = mask.sum(1)
    share = budget / (n[:, None] if budget.ndim == 2 else n)
    return np.where(mask[..., None] if budget.ndim == 2 else mask, share[:, None], 0.0)


def _swapped(cd):
    """The study's two-resource baselines: data's exponent on compute and vice versa."""
    return cd._replace(g1=cd.g2, g2=cd.g1)


def run_variant(two, n_experiments, n_agents):
    """Returns (acc: dict method -> f[experiments, sizes], diagnostics)."""
    inst = instances.study_sweep(two, n_experiments, n_agents)
    names = ("fairsynergy", "uniform", "random") + (("joint", "uniform_swapped", "random_swapped") if two else ())
    acc = {m: np.zeros((n_experiments, n_agents)) for m in names}
    times, bad, gaps = [], 0, []
    for e in range(n_experiments):
        utility, budget, mask = instances.sweep_batch(inst, e)
        t0 = time.perf_counter()
        if two:
            # One call gives both: the study's pass, and through `gap` the joint
            # solve's objective (alpha 0: the summed accuracy) from the same loop.
            out = allocation.solve_batch(utility, budget, mask=mask, method="study")
            gap = np.asarray(out.gap)
            acc["joint"][e] = (np.asarray(out.objective) + gap) / mask.sum(1)
            gaps.append(gap)
        else:
            out = allocation.solve_batch(utility, budget, mask=mask)
            bad += int(np.sum(~np.asarray(out.converged)))
        out.objective.block_until_ready()
        times.append(time.perf_counter() - t0)
        acc["fairsynergy"][e] = np.asarray(out.utilities.sum(1)) / mask.sum(1)
        splits = {"uniform": _uniform_split(budget, mask), "random": instances.random_split(inst, e)}
        for name, x in splits.items():
            acc[name][e] = np.asarray(_mean_accuracy(utility, x, mask))
            if two:
                acc[name + "_swapped"][e] = np.asarray(_mean_accuracy(_swapped(utility), x, mask))
    diag = {"compile_s": times[0], "solve_s": float(np.median(times[1:])) if len(times) > 1 else times[0],
            "not_converged": bad, "gap": np.stack(gaps) if gaps else None}
    return acc, diag


def study_layout(acc, fairsynergy="fairsynergy"):
    """The study's result array: means of FairSynergy, uniform, random, then their stds (ddof 0): f[6, sizes]."""
    rows = [acc[fairsynergy], acc["uniform"], acc["random"]]
    return np.concatenate([np.stack([r.mean(0) for r in rows]), np.stack([r.std(0) for r in rows])]).astype(np.float64)


def plot(results, path):
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4))
    for ax, (title, acc) in zip(np.atleast_1d(axes), results.items()):
        sizes = np.arange(1, next(iter(acc.values())).shape[1] + 1)
        for name, a in acc.items():
            if name.endswith("_swapped"):
                continue
            label = {"fairsynergy": "FairSynergy" + (" (study pass)" if "joint" in acc else ""),
                     "joint": "FairSynergy (joint)"}.get(name, name)
            mean, std = a.mean(0), a.std(0)
            ax.plot(sizes, mean, label=label)
            ax.fill_between(sizes, mean - std, mean + std, alpha=0.2)
        ax.set_xlabel("number of agents")
        ax.set_ylabel("mean accuracy (mean +- std over experiments)")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _print_table(title, acc, diag):
    names = [m for m in acc if not m.endswith("_swapped")]
    n_exp, n_max = acc["uniform"].shape
    print(f"\n{title}: {n_exp} experiments x {n_max} sizes")
    print(f"  batched solve per experiment: {diag['solve_s'] * 1e3:.1f} ms (first call incl. compile "
          f"{diag['compile_s']:.2f} s)" + ("" if diag["gap"] is not None else
                                          f"; not converged: {diag['not_converged']}"))
    print("  " + f"{'agents':>6} " + " ".join(f"{m:>20}" for m in names))
    for n in REPORT_SIZES:
        if n <= n_max:
            cells = [f"{acc[m][:, n - 1].mean():.4f} +- {acc[m][:, n - 1].std():.4f}" for m in names]
            print("  " + f"{n:>6} " + " ".join(f"{c:>20}" for c in cells))
    means = {m: a.mean(0) for m, a in acc.items()}
    for m in ("uniform", "random"):
        low = np.min(means["fairsynergy"] - means[m])
        print(f"  FairSynergy minus {m}, smallest over sizes: {low:+.4f}")
    if diag["gap"] is not None:
        j, s = means["joint"], means["fairsynergy"]
        k = int(np.argmax(np.abs(j / s - 1)))
        print(f"  joint minus study pass (mean accuracy): largest {np.max(j - s):+.4f}, relative "
              f"{(j[k] / s[k] - 1) * 100:+.1f}% at {k + 1} agents; objective gap per system min "
              f"{diag['gap'].min():+.3e}, max {diag['gap'].max():+.3e}")
        for m in ("uniform", "random"):
            d = means[m + "_swapped"] - means[m]
            print(f"  study's swapped {m} minus correct {m}: mean over sizes {d.mean():+.4f}, "
                  f"range [{d.min():+.4f}, {d.max():+.4f}]")


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--experiments", type=int, default=20)
    p.add_argument("--agents", type=int, default=100)
    args = p.parse_args(argv)
    out = common.out_dir(args.out)
    t0 = time.perf_counter()
    results = {}
    with jax.enable_x64(True):
        for tag, two, title in (("one", False, "one resource (power law)"), ("two", True, "two resources (Cobb-Douglas)")):
            acc, diag = run_variant(two, args.experiments, args.agents)
            results[title] = acc
            np.save(out / FILES[tag], study_layout(acc))
            if two:
                np.save(out / FILES["joint"], study_layout(acc, "joint"))
            rows = [(e + 1, s + 1, name, a[e, s]) for name, a in acc.items()
                    for e in range(a.shape[0]) for s in range(a.shape[1])]
            common.write_csv(out / f"sweep_{tag}.csv", ["experiment", "n_agents", "method", "mean_accuracy"], rows)
            _print_table(title, acc, diag)
    plot(results, out / "sweep.png")
    written = ", ".join(str(out / f) for f in (*FILES.values(), "sweep_one.csv", "sweep_two.csv", "sweep.png"))
    print(f"\nwrote {written}\ntotal {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
