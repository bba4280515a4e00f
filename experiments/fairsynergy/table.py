"""The study's two-agent table: FairSynergy vs uniform, checked against cvxpy.

Run from the repository root::

    python -m experiments.fairsynergy.table [--out DIR]

Writes ``table.csv`` and ``table.png``; prints both solvers' numbers and their
largest difference, and exits non-zero if FairSynergy and cvxpy disagree
(allocation gap >= 1e-4 or relative objective gap >= 1e-6).
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.fairsynergy import common  # noqa: E402
from fsjax import allocation  # noqa: E402

GAMMA = 0.25
SCENARIOS = {  # name -> (budget, initial resources); both agents have gamma 0.25
    "hand": (0.7, [0.007, 0.007]),
    "moreResource": (1.0, [0.007, 0.007]),
    "oneAccHigher": (0.7, [0.8, 0.007]),
}
# The acceptance bounds: allocation gap < 1e-4, relative objective gap < 1e-6.
ALLOCATION_TOL, OBJECTIVE_TOL = 1e-4, 1e-6


def rows_for(name, budget, e_init):
    """Table rows (scenario, method, agent, allocation, utility, price, objective) and the cvxpy gap."""
    pl = allocation.PowerLaw(jnp.full(2, GAMMA), jnp.asarray(e_init))
    results = {"fairsynergy": allocation.solve(pl, budget), "uniform": allocation.uniform(pl, budget)}
    x_ref, status = common.cvxpy_study(np.full(2, GAMMA), np.asarray(e_init), budget, approx=False, tol=1e-9)
    assert status == "optimal", status
    x_ref = np.clip(x_ref, 0.0, None)
    rows = []
    for method, out in results.items():
        rows += [(name, method, i + 1, float(out.allocation[i]), float(out.utilities[i]), float(out.prices[i]),
                  float(out.objective)) for i in range(2)]
    u_ref = (x_ref + e_init) ** GAMMA
    p_ref = GAMMA * (x_ref + e_init) ** (GAMMA - 1)
    rows += [(name, "cvxpy", i + 1, x_ref[i], u_ref[i], p_ref[i], u_ref.sum()) for i in range(2)]
    fs = results["fairsynergy"]
    gap_x = float(np.max(np.abs(np.asarray(fs.allocation) - x_ref)))
    gap_obj = abs(float(fs.objective) - u_ref.sum()) / u_ref.sum()
    return rows, gap_x, gap_obj, bool(fs.converged)


def plot(rows, path):
    fig, axes = plt.subplots(1, len(SCENARIOS), figsize=(11, 3.4), sharey=True)
    methods = ("fairsynergy", "cvxpy", "uniform")
    for ax, name in zip(axes, SCENARIOS):
        for k, method in enumerate(methods):
            vals = [r for r in rows if r[0] == name and r[1] == method]
            xs = np.arange(2) + (k - 1) * 0.27
            bars = ax.bar(xs, [r[3] for r in vals], width=0.25, label=method)
            for bar, r in zip(bars, vals):
                ax.annotate(f"u={r[4]:.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=6, rotation=90)
        budget, e = SCENARIOS[name]
        ax.set_title(f"{name}\nB={budget}, e={e}", fontsize=9)
        ax.set_xticks([0, 1], ["agent 1", "agent 2"])
        ax.set_ylim(0, 0.85)  # room for the utility labels
    axes[0].set_ylabel("allocation (u = accuracy)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> int:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    out = common.out_dir(args.out)
    rows, ok = [], True
    with jax.enable_x64(True):
        for name, (budget, e) in SCENARIOS.items():
            r, gap_x, gap_obj, converged = rows_for(name, budget, e)
            rows += r
            ok &= gap_x < ALLOCATION_TOL and gap_obj < OBJECTIVE_TOL and converged
            print(f"{name:<13} FairSynergy vs cvxpy: max |dx| = {gap_x:.1e}, objective rel. gap = {gap_obj:.1e}, "
                  f"converged={converged}")
    print()
    print(f"{'scenario':<13} {'method':<12} {'agent':>5} {'allocation':>11} {'utility':>9} {'price':>9} "
          f"{'objective':>10}")
    for r in rows:
        print(f"{r[0]:<13} {r[1]:<12} {r[2]:>5} {r[3]:>11.6f} {r[4]:>9.6f} {r[5]:>9.6f} {r[6]:>10.6f}")
    common.write_csv(out / "table.csv", ["scenario", "method", "agent", "allocation", "utility", "price", "objective"],
                     rows)
    plot(rows, out / "table.png")
    print(f"\nwrote {out / 'table.csv'} and {out / 'table.png'}")
    if not ok:
        print(f"FairSynergy and cvxpy differ by more than {ALLOCATION_TOL} (allocation) or {OBJECTIVE_TOL} "
              "(relative objective)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
