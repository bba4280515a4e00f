"""Box plots of mean accuracy per method on the study's 86 two-agent deep-learning configs.

Run from the repository root::

    python -m experiments.fairsynergy.boxplots [--data FILE] [--out DIR]

Each config is a two-agent Cobb-Douglas system (data rho with exponent g1,
compute with exponent g2, shared by both agents; budgets E_bar and T). All 86
configs are solved in one batched call per method. Writes ``boxplots.csv`` and
``boxplots.png``.

Methods: ``joint`` (fsjax's default two-resource solve), ``study-pass`` (the
study's FairSynergy: data with compute at zero extra, then compute), uniform,
random (``jax.random``, Dirichlet(1)), equalizing, and ``random-study`` (the
study's own random split: its code re-seeds numpy with 42 in every call, so
every config gets the same two Dirichlet draws). The baselines use the correct
Cobb-Douglas; what the study's swapped exponents would have shown is printed
below the table.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.fairsynergy import common  # noqa: E402
from fsjax import allocation  # noqa: E402

KEYS = ("E_bar_vec", "T_vec", "rho_init_1", "rho_init_2", "alpha_init_1", "alpha_init_2", "gamma1_vec", "gamma2_vec")


def load_configs(path):
    """The configs as a batched CobbDouglas ``[c, 2]`` and budgets ``[c, 2]``; ValueError on a bad file."""
    with open(path) as f:
        doc = json.load(f)
    missing = [k for k in KEYS if k not in doc]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}; expected {list(KEYS)}")
    cols = {k: np.asarray(doc[k], float) for k in KEYS}
    sizes = {k: v.shape for k, v in cols.items()}
    if len(set(sizes.values())) != 1 or cols["E_bar_vec"].ndim != 1:
        raise ValueError(f"{path}: every key must hold one list of equal length; got shapes {sizes}")
    pair = lambda a: jnp.asarray(np.stack([a, a], -1))  # both agents share the config's exponents
    utility = allocation.CobbDouglas(
        g1=pair(cols["gamma1_vec"]), g2=pair(cols["gamma2_vec"]),
        init1=jnp.asarray(np.stack([cols["rho_init_1"], cols["rho_init_2"]], -1)),
        init2=jnp.asarray(np.stack([cols["alpha_init_1"], cols["alpha_init_2"]], -1)),
        scale=jnp.ones((len(cols["E_bar_vec"]), 2)))
    budget = jnp.asarray(np.stack([cols["E_bar_vec"], cols["T_vec"]], -1))
    return utility, budget


def study_random_split(budget):
    """The study's random split: ``np.random.seed(42)`` then one Dirichlet for data, one for compute, per config.

    Args:
        budget: f[c, 2] (data, compute) budgets.

    Returns:
        f[c, 2 agents, 2 resources].
    """
    rs = np.random.RandomState(42)
    d_data, d_compute = rs.dirichlet(np.ones(2), size=1)[0], rs.dirichlet(np.ones(2), size=1)[0]
    budget = np.asarray(budget)
    return np.stack([d_data[None, :] * budget[:, :1], d_compute[None, :] * budget[:, 1:]], -1)


def swapped(cd):
    """The study's baselines' utility: data's exponent on compute and vice versa."""
    return cd._replace(g1=cd.g2, g2=cd.g1)


@jax.jit
def _baselines(utility, budget, key):
    keys = jax.random.split(key, budget.shape[0])
    run = lambda fn: jax.vmap(lambda u, b, k: fn(u, b, key=k).utilities.mean())(utility, budget, keys)
    return [run(fn) for fn in (allocation.uniform, allocation.random, allocation.equalizing)]


def main(argv=None) -> int:
    args = common.parser(__doc__.splitlines()[0], data=True).parse_args(argv)
    out = common.out_dir(args.out)
    path = common.data_path(args.data)
    with jax.enable_x64(True):
        utility, budget = load_configs(path)
        joint = allocation.solve_batch(utility, budget)
        study = allocation.solve_batch(utility, budget, method="study")
        base = _baselines(utility, budget, jax.random.key(42))
        x_uniform = np.broadcast_to(np.asarray(budget)[:, None, :] / 2, (len(budget), 2, 2))
        x_random = study_random_split(budget)
        value = jax.vmap(lambda u, x: u.value(x))
        # To numpy (float64) before reducing: jnp outside the x64 scope would truncate to float32.
        acc = {"joint": np.asarray(joint.utilities).mean(1), "study-pass": np.asarray(study.utilities).mean(1),
               "uniform": np.asarray(base[0]), "random": np.asarray(base[1]), "equalizing": np.asarray(base[2]),
               "random-study": np.asarray(value(utility, x_random)).mean(1)}
        swap = {"uniform": np.asarray(value(swapped(utility), x_uniform)).mean(1),
                "random-study": np.asarray(value(swapped(utility), x_random)).mean(1)}
    n = len(budget)
    common.write_csv(out / "boxplots.csv", ["config", *acc], [(c, *(acc[m][c] for m in acc)) for c in range(n)])

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.boxplot([acc[m] for m in acc], showmeans=True)
    ax.set_xticks(range(1, len(acc) + 1), list(acc))
    ax.set_ylabel("mean accuracy of the two agents")
    ax.set_title(f"{n} two-agent configs ({path.name})")
    fig.tight_layout()
    fig.savefig(out / "boxplots.png", dpi=130)
    plt.close(fig)

    print(f"{n} configs from {path}; joint solve converged on {int(np.sum(joint.converged))}/{n}")
    print(f"{'method':<12} {'median':>8} {'mean':>8} {'q25':>8} {'q75':>8} {'min':>8} {'max':>8}")
    for m, v in acc.items():
        q = np.percentile(v, [50, 25, 75])
        print(f"{m:<12} {q[0]:>8.4f} {v.mean():>8.4f} {q[1]:>8.4f} {q[2]:>8.4f} {v.min():>8.4f} {v.max():>8.4f}")
    gap = np.asarray(joint.gap)
    print(f"joint minus study-pass objective: median {np.median(gap):.2e}, max {gap.max():.2e}, "
          f"configs with gap > 1e-6: {int(np.sum(gap > 1e-6))}/{n}")
    wins = {m: int(np.sum(acc["joint"] >= acc[m] - 1e-12)) for m in acc if m != "joint"}
    print("joint >= method (to 1e-12) on configs: " + ", ".join(f"{m} {w}/{n}" for m, w in wins.items()))
    for fs in ("study-pass", "joint"):
        gains = ", ".join(f"{(acc[fs].mean() / acc[m].mean() - 1) * 100:+.1f}% vs {m}"
                          for m in ("uniform", "random", "random-study"))
        print(f"{fs} mean gain (mean accuracy over configs): {gains}")
    for m, v in swap.items():
        print(f"study's swapped {m}: mean {v.mean():.4f} (correct {acc[m].mean():.4f}); "
              f"study-pass gain would read {(acc['study-pass'].mean() / v.mean() - 1) * 100:+.1f}%, "
              f"joint {(acc['joint'].mean() / v.mean() - 1) * 100:+.1f}%")
    ties = int(np.sum(np.abs(acc["equalizing"] - acc["joint"]) < 1e-9))
    print(f"equalizing within 1e-9 of FairSynergy on {ties}/{n} configs (both agents share the exponents)")
    print(f"\nwrote {out / 'boxplots.csv'} and {out / 'boxplots.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
