"""Gradient through the solver: tune the budget split for a fairness-accuracy objective.

Twelve agents with power-law learning curves share a budget. For a trade-off
weight ``beta`` we maximise ``J(theta) = mean(u) + beta * jain(u)`` where ``u``
are the utilities of FairSynergy's optimum with welfare weights
``w = softplus(theta)``: the gradient ``dJ/dtheta`` flows through
``fsjax.allocation.solve`` by implicit differentiation (no unrolled solver).
The tuned points are compared with the alpha-fair family (alpha from 0 to 16)
and the uniform split in one figure of mean utility against the Jain index.

    python -m experiments.fairsynergy.tradeoff [--out DIR]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.fairsynergy import common
from fsjax import allocation, metrics, plots


def agents(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return allocation.PowerLaw(gamma=jnp.asarray(rng.uniform(0.2, 0.8, n), jnp.float32),
                               e_init=jnp.asarray(rng.uniform(0.01, 0.3, n), jnp.float32),
                               scale=jnp.asarray(rng.uniform(0.5, 1.0, n), jnp.float32))


BUDGET = 2.0


def utilities(theta, util, alpha=0.0):
    w = jax.nn.softplus(theta)
    return allocation.solve(util, BUDGET, alpha=alpha, weights=w / jnp.mean(w)).utilities


def objective(theta, util, beta):
    u = utilities(theta, util)
    return jnp.mean(u) + beta * metrics.jain(u)


def tune(util, beta, steps=150, lr=0.05):
    """Gradient ascent on the welfare weights' logits; returns (theta, history of J)."""
    opt = optax.adam(lr)
    theta = jnp.full(util.gamma.shape, 0.5413)    # softplus^-1(1): equal weights
    state = opt.init(theta)
    grad = jax.jit(jax.value_and_grad(objective), static_argnums=())

    values = []
    for _ in range(steps):
        j, g = grad(theta, util, beta)
        updates, state = opt.update(-g, state)
        theta = optax.apply_updates(theta, updates)
        values.append(float(j))
    return theta, values


def check_gradient(beta=1.0, eps=1e-2):
    """Implicit gradient vs central finite differences on three coordinates (float64).

    The solve is exact to about 1e-7, so the differences need a step near 1e-2.
    """
    with jax.enable_x64(True):
        util = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), agents())
        return _gradient_error(util, beta, eps)


def _gradient_error(util, beta, eps):
    theta = jnp.linspace(-0.5, 1.0, util.gamma.shape[0], dtype=util.gamma.dtype)
    g = jax.grad(objective)(theta, util, beta)
    errs = []
    for i in (1, 5, 9):   # agents with an interior allocation
        e = jnp.zeros_like(theta).at[i].set(eps)
        fd = (objective(theta + e, util, beta) - objective(theta - e, util, beta)) / (2 * eps)
        errs.append(abs(float(g[i]) - float(fd)) / max(abs(float(fd)), 1e-6))
    return max(errs)


def main(argv=None) -> int:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    out = common.out_dir(args.out)
    util = agents()
    rows = []
    uni = allocation.uniform(util, BUDGET).utilities
    rows.append(("uniform", "", float(jnp.mean(uni)), float(metrics.jain(uni))))
    alphas = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    for a in alphas:
        u = allocation.solve(util, BUDGET, alpha=a).utilities
        rows.append(("alpha-fair", a, float(jnp.mean(u)), float(metrics.jain(u))))
    for beta in (0.0, 0.1, 0.25, 0.5, 1.0, 2.0):
        theta, values = tune(util, beta)
        u = utilities(theta, util)
        rows.append(("gradient-tuned weights", beta, float(jnp.mean(u)), float(metrics.jain(u))))
        print(f"beta={beta:<4} J: {values[0]:.4f} -> {values[-1]:.4f}  "
              f"mean u={float(jnp.mean(u)):.4f} jain={float(metrics.jain(u)):.4f}")
    err = check_gradient()
    print(f"implicit gradient vs central differences: max relative error {err:.2e}")
    common.write_csv(out / "tradeoff.csv", ["method", "param", "mean_utility", "jain"], rows)

    plt = plots._plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method, marker in (("alpha-fair", "o-"), ("gradient-tuned weights", "s--"),
                           ("uniform", "k^")):
        pts = [(r[3], r[2], r[1]) for r in rows if r[0] == method]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, label=method, ms=5)
        for x, y, label in pts:
            if label != "":
                ax.annotate(f"{'a' if method == 'alpha-fair' else 'b'}={label:g}", (x, y),
                            fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("Jain index of utilities (fairness)")
    ax.set_ylabel("mean utility (accuracy)")
    ax.set_title(f"{len(util.gamma)} agents, budget {BUDGET}: fairness-accuracy trade-off",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = plots._save(fig, out / "tradeoff.png")
    print(f"wrote {path} and {out / 'tradeoff.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
