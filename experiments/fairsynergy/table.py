"""The study's two-agent table, all seven scenarios: FairSynergy vs uniform, checked against cvxpy.

Run from the repository root::

    python -m experiments.fairsynergy.table [--out DIR]

Each scenario's inputs are one ``fsjax allocate`` file in ``scenarios/``
(``common.SCENARIOS``, in the study's order). Prints allocation, utility and
price per agent for FairSynergy, uniform and cvxpy (the study's formulation,
exact power cones), writes ``table.csv`` and ``table.png``, and exits non-zero
if FairSynergy and cvxpy disagree (allocation gap >= 1e-4 or relative
objective gap >= 1e-6) or a solve did not converge.
"""

from __future__ import annotations

import sys

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.fairsynergy import common  # noqa: E402
from fsjax import allocation  # noqa: E402
from fsjax.allocation import reference, report  # noqa: E402

# The acceptance bounds: allocation gap < 1e-4, relative objective gap < 1e-6.
ALLOCATION_TOL, OBJECTIVE_TOL = 1e-4, 1e-6


def load(name):
    """``(PowerLaw, budget)`` of one scenario, read from its ``fsjax allocate`` file."""
    agents = report.load_agents(common.scenario_path(name))
    return agents.utility, agents.budget


def solve_scenario(name):
    """``{method: (allocation f[2], utilities f[2], prices f[2], objective)}`` for fairsynergy, uniform, cvxpy.

    Call inside ``jax.enable_x64(True)``.
    """
    pl, budget = load(name)
    out = {m: allocation.REGISTRY[m](pl, budget) for m in ("fairsynergy", "uniform")}
    res = {m: (np.asarray(o.allocation), np.asarray(o.utilities), np.asarray(o.prices), float(o.objective))
           for m, o in out.items()}
    g, e = np.asarray(pl.gamma, float), np.asarray(pl.e_init, float)
    x_ref, status = reference.cvxpy_study(g, e, budget, approx=False, tol=1e-9)
    if status != "optimal":
        raise RuntimeError(f"{name}: cvxpy status {status}")
    x_ref = np.clip(x_ref, 0.0, None)
    u_ref = (x_ref + e) ** g
    res["cvxpy"] = (x_ref, u_ref, g * (x_ref + e) ** (g - 1), float(u_ref.sum()))
    res["converged"] = bool(out["fairsynergy"].converged)
    return res


def gaps(res):
    """(max allocation gap, relative objective gap) of FairSynergy against cvxpy."""
    fs, ref = res["fairsynergy"], res["cvxpy"]
    return float(np.max(np.abs(fs[0] - ref[0]))), abs(fs[3] - ref[3]) / abs(ref[3])


def plot(table, path):
    fig, axes = plt.subplots(1, len(table), figsize=(2.3 * len(table), 3.6), sharey=True)
    for ax, (name, res) in zip(axes, table.items()):
        for k, method in enumerate(("fairsynergy", "cvxpy", "uniform")):
            x, u = res[method][0], res[method][1]
            bars = ax.bar(np.arange(2) + (k - 1) * 0.27, x, width=0.25, label=method)
            for bar, ui in zip(bars, u):
                ax.annotate(f"u={ui:.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=6, rotation=90)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([0, 1], ["agent 1", "agent 2"])
    axes[0].set_ylim(0, 2.4)  # room for the utility labels
    axes[0].set_ylabel("allocation (u = accuracy)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> int:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    out = common.out_dir(args.out)
    table, ok = {}, True
    with jax.enable_x64(True):
        for name in common.SCENARIOS:
            res = table[name] = solve_scenario(name)
            gap_x, gap_obj = gaps(res)
            ok &= gap_x < ALLOCATION_TOL and gap_obj < OBJECTIVE_TOL and res["converged"]
            print(f"{name:<15} FairSynergy vs cvxpy: max |dx| = {gap_x:.1e}, objective rel. gap = {gap_obj:.1e}, "
                  f"converged={res['converged']}")
    rows = [(name, m, i + 1, res[m][0][i], res[m][1][i], res[m][2][i], res[m][3])
            for name, res in table.items() for m in ("fairsynergy", "uniform", "cvxpy") for i in range(2)]
    print()
    print(f"{'scenario':<15} {'method':<12} {'agent':>5} {'allocation':>11} {'utility':>9} {'price':>9} "
          f"{'objective':>10}")
    for r in rows:
        print(f"{r[0]:<15} {r[1]:<12} {r[2]:>5} {r[3]:>11.6f} {r[4]:>9.6f} {r[5]:>9.6f} {r[6]:>10.6f}")
    common.write_csv(out / "table.csv", ["scenario", "method", "agent", "allocation", "utility", "price", "objective"],
                     rows)
    plot(table, out / "table.png")
    print(f"\nwrote {out / 'table.csv'} and {out / 'table.png'}")
    if not ok:
        print(f"FairSynergy and cvxpy differ by more than {ALLOCATION_TOL} (allocation) or {OBJECTIVE_TOL} "
              "(relative objective), or a solve did not converge", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
