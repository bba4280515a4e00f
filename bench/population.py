"""Round cost against the population size C at a fixed K (issue 19).

Each configuration runs in its own process (so peak RSS is that
configuration's): it builds a :class:`fsjax.simulation.Simulation` over a
``sample`` population (each client draws ``examples_per_client`` images with
replacement from one shared data set, from its own seed: O(C) integers),
runs one warm-up round (compile, excluded), then times ``repeats`` rounds of
:meth:`Simulation.step`, the one round fsjax has: Markov availability over C,
selection over C, the gather of the K selected clients' rows, local training,
aggregation, the sampled evaluation (``eval.clients`` random clients plus the
K selected) and the ten fairness metrics over C.

Workloads (the issue's): the CIFAR-10 CNN at K = 50 and the MLP at K = 1,000,
for C = 10^3, 10^4, 10^5, 10^6. ``--quick``: the MLP at K = 50 on small
generated images, a few minutes on a 2-core CPU.

Usage::

    python -m bench.population --quick     # minutes
    python -m bench.population             # the issue's workloads (meant for a GPU)

Writes ``population.csv`` and ``population.png`` under ``--out`` (default
``bench/results/``) and prints a table and the ratio line
``round(C=max) / round(C=min)`` per workload.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

POPULATIONS = (10**3, 10**4, 10**5, 10**6)
WORKLOADS = {  # name: (model overrides, K, data overrides, local steps)
    "cnn": (["model.name=cnn"], 50,
            ["data.n_train=50000", "data.image_shape=[32,32,3]"], 5),
    "mlp": (["model.name=mlp", "model.hidden=[64]"], 1000,
            ["data.n_train=50000", "data.image_shape=[32,32,3]"], 5),
}
QUICK = {"mlp": (["model.name=mlp", "model.hidden=[64]"], 50,
                 ["data.n_train=10000", "data.image_shape=[8,8,3]"], 2)}


def overrides(workload, num_clients: int, eval_clients: int) -> list[str]:
    model, k, data, steps = workload
    return [*model, *data, "data.source=synthetic", "data.n_test=100", "rounds=1000000",
            "partition.name=sample", f"partition.num_clients={num_clients}",
            "partition.examples_per_client=51", "partition.split_test=0.02",
            f"local.steps={steps}", "local.batch_size=10", "selection.name=random",
            f"selection.clients_per_round={k}", "availability.name=markov",
            "availability.p_drop=0.1", "availability.p_return=0.3",
            f"eval.clients={eval_clients}", "engine.shard=false"]


def measure_one(sets: list[str], repeats: int) -> dict:
    """Runs in the child process: build, warm up, time ``repeats`` rounds."""
    import jax
    import numpy as np

    from bench.round import peak_rss_mb
    from fsjax import config, simulation

    cfg = config.load(None, overrides=tuple(sets))
    t0 = time.perf_counter()
    sim = simulation.Simulation(cfg)
    state = sim.init()
    jax.block_until_ready((state, sim.data.label_hist))
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, m = sim.step(state)
    jax.block_until_ready((state, m))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, m = sim.step(state)
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    k = cfg.selection.clients_per_round
    return {"build_s": build, "first_s": first, "median_s": med, "min_s": min(times),
            "max_s": max(times), "peak_rss_mb": peak_rss_mb(),
            "updates_per_s": float(m["selected"]) / med, "k": k,
            "backend": jax.default_backend()}


def run(workloads: dict, populations, repeats: int, eval_clients: int, out: Path) -> list[dict]:
    rows = []
    for name, w in workloads.items():
        for c in populations:
            sets = overrides(w, c, eval_clients)
            cmd = [sys.executable, "-m", "bench.population", "--one", json.dumps(sets),
                   "--repeats", str(repeats)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                print(f"{name} C={c}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
                continue
            row = {"workload": name, "clients": c, **json.loads(res.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"{name:4} C={c:>8,} K={row['k']:>5}  round {row['median_s']:.4f} s "
                  f"[{row['min_s']:.4f}, {row['max_s']:.4f}]  {row['updates_per_s']:8.1f} "
                  f"updates/s  peak RSS {row['peak_rss_mb']:7.0f} MiB  "
                  f"(build {row['build_s']:.1f} s, first round {row['first_s']:.1f} s)",
                  flush=True)
    out.mkdir(parents=True, exist_ok=True)
    if rows:
        with open(out / "population.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        plot(out / "population.png", rows)
    for name in workloads:
        mine = [r for r in rows if r["workload"] == name]
        if len(mine) >= 2:
            print(f"ratio {name}: round(C={mine[-1]['clients']:,}) / round(C={mine[0]['clients']:,})"
                  f" = {mine[-1]['median_s'] / mine[0]['median_s']:.2f}")
    return rows


def plot(path: Path, rows: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    for name in sorted({r["workload"] for r in rows}):
        mine = [r for r in rows if r["workload"] == name]
        label = f"{name}, K={mine[0]['k']}"
        a.plot([r["clients"] for r in mine], [r["median_s"] for r in mine], "o-", label=label)
        b.plot([r["clients"] for r in mine], [r["peak_rss_mb"] / 1024 for r in mine], "o-",
               label=label)
    for ax, ylabel in ((a, "seconds per round (median)"), (b, "peak RSS (GiB)")):
        ax.set_xscale("log")
        ax.set_xlabel("clients C")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict] | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the MLP at K=50, minutes on a CPU")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; quick 3)")
    ap.add_argument("--populations", type=int, nargs="+", default=list(POPULATIONS))
    ap.add_argument("--eval-clients", type=int, default=100, help="eval.clients (M)")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    if args.one:
        print(json.dumps(measure_one(json.loads(args.one), repeats)))
        return None
    print(f"load average: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f}; {os.cpu_count()} CPUs", flush=True)
    return run(QUICK if args.quick else WORKLOADS, args.populations, repeats,
               args.eval_clients, args.out)


if __name__ == "__main__":
    main()
