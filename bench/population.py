"""Round cost against the population size C at a fixed K (issue 19).

Each configuration runs in its own process (so peak RSS is that
configuration's): it builds a :class:`fsjax.simulation.Simulation` over a
``sample`` population (each client draws ``examples_per_client`` images with
replacement from one shared data set, from its own seed: O(C) integers),
runs one warm-up round (compile, excluded), then times ``repeats`` rounds of
:meth:`Simulation.step`, the one round fsjax has: Markov availability over C,
CUP selection over C (``selection.name: cup``, ``sampler`` from ``--sampler``,
default ``systematic``), the gather of the K selected clients' rows, local
training, aggregation, the sampled evaluation (``eval.clients`` random clients
plus the K selected), the selector's update and the fairness metrics over C.

Then (unless ``--no-parts``) the same process times each O(C) piece of a
round alone, jitted, on the state the rounds left (:func:`measure_parts`):
availability step, CUP select (and its water-filling and both samplers),
the selector's update, the ledger's update (``participation.gain`` and
``record``), ``cup_metrics`` (and the two sorts it used to make),
``metrics.round_metrics``, the per-slot training keys as the round draws them
(``jax.random.split(key, C)[slots]``) and per slot, the sampled evaluation's
ids and the selected clients' label counts (over C, and over the K slots).
``oc_share`` is availability + select + selector update + ledger update +
cup_metrics + round_metrics over the round's median: the issue's "< 10 %".

Workloads (the issue's): the CIFAR-10 CNN at K = 50 and the MLP at K = 1,000,
for C = 10^3, 10^4, 10^5, 10^6. ``--quick``: the MLP at K = 50 on small
generated images, a few minutes on a 2-core CPU.

Usage::

    python -m bench.population --quick     # minutes
    python -m bench.population             # the issue's workloads (~12 min on a 2-core CPU)
    python -m bench.population --workloads mlp --populations 1000000   # one point

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


def overrides(workload, num_clients: int, eval_clients: int,
              sampler: str = "systematic") -> list[str]:
    model, k, data, steps = workload
    return [*model, *data, "data.source=synthetic", "data.n_test=100", "rounds=1000000",
            "partition.name=sample", f"partition.num_clients={num_clients}",
            "partition.examples_per_client=51", "partition.split_test=0.02",
            f"local.steps={steps}", "local.batch_size=10", "selection.name=cup",
            f"selection.sampler={sampler}",
            f"selection.clients_per_round={k}", "availability.name=markov",
            "availability.p_drop=0.1", "availability.p_return=0.3",
            f"eval.clients={eval_clients}", "engine.shard=false"]


def _time(fn, *args, repeats: int = 5) -> float:
    """Median seconds of ``fn(*args)`` (jitted, first call excluded)."""
    import jax
    import numpy as np

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


PART_NAMES = ("availability", "cup_select", "water_filling", "pivotal", "systematic",
              "selector_update", "ledger_record", "cup_metrics", "cup_metrics_sorts",
              "round_metrics", "keys_split_C", "keys_per_slot", "eval_ids", "label_counts_C",
              "label_counts_K")
OC_PARTS = ("availability", "cup_select", "selector_update", "ledger_record", "cup_metrics",
            "round_metrics")


def measure_parts(sim, state, repeats: int = 5) -> dict:
    """Seconds (median) of each O(C) piece of a round, alone and jitted, at this C and K.

    ``sim``'s own availability model and selector on ``state`` (the state
    after the timed rounds), so the counts are a run's. The pieces are the
    ones the round runs (:mod:`fsjax.simulation`), plus the alternatives this
    benchmark compares: both CUP samplers, ``cup_metrics``'s old sorts
    (``_gini`` of the participation counts and the sort of the normalised
    utilities), and the per-slot forms of the training keys and label counts.
    """
    import math

    import jax
    import jax.numpy as jnp

    from fsjax import cup_metrics as cm
    from fsjax import evaluation, metrics, participation, selection
    from fsjax.selection import cup_scheduler as cs

    C, K = sim.num_clients, sim.num_slots
    key = jax.random.key(123)
    raw = jax.random.PRNGKey(123)
    st = state.select_state
    base = st.base if hasattr(st, "base") else st
    _, avail = sim.availability.step(state.avail_state, key)
    sel = sim.selector.select(st, avail, key, K)
    slots, valid = sel.slots, sel.valid
    chosen = selection.slot_mask(slots, valid, C)
    fb = selection.Feedback(available=avail, selected=chosen, participated=chosen,
                            utility=state.accuracy, loss=state.loss)
    pi = cs.availability_now(base, avail)
    q = cs.inclusion_probabilities(cs.cup_scores(pi, base.rounds - base.participated), avail, K)
    led = state.ledger
    rounds = state.round
    tail = max(1, math.ceil(0.1 * C))

    def record(ledger, a, s, acc, prev):
        g = participation.gain(sim.config.utility.name, first_round=False, accuracy=acc,
                               prev_accuracy=prev, ledger=ledger)
        return participation.record(ledger, t=rounds, available=a, selected=s, participated=s,
                                    gain=g, accuracy=acc)

    def sorts(p, a, u, t):
        x = jnp.nan_to_num(cm.normalised_utility(u, a, t), nan=0.0)
        return cm._gini(p.astype(jnp.float32)), jnp.mean(jnp.sort(x)[:tail])

    fd = sim.data
    parts = {
        "availability": (jax.jit(sim.availability.step), state.avail_state, key),
        "cup_select": (jax.jit(lambda s, a, k: sim.selector.select(s, a, k, K)), st, avail, key),
        "water_filling": (jax.jit(lambda w, a: cs.inclusion_probabilities(w, a, K)),
                          cs.cup_scores(pi, base.rounds - base.participated), avail),
        "pivotal": (cs.dependent_rounding, key, q),
        "systematic": (cs.systematic_sampling, key, q),
        "selector_update": (jax.jit(sim.selector.update), st, fb),
        "ledger_record": (jax.jit(record), led, avail, chosen, state.accuracy, state.loss),
        "cup_metrics": (cm.cup_metrics, led.selected, led.available, led.participated,
                        led.utility, K, rounds),
        "cup_metrics_sorts": (jax.jit(sorts), led.participated, led.available, led.utility,
                              rounds),
        "round_metrics": (jax.jit(lambda acc, ca, p, a: metrics.round_metrics(
            accuracy=acc, cum_accuracy=ca, participation=p, ever_available=a > 0,
            rounds=rounds, selected_label_counts=jnp.ones(sim.num_classes),
            global_label_dist=fd.global_dist, class_loss=state.class_loss)),
            state.accuracy, led.cum_accuracy, led.participated, led.available),
        "keys_split_C": (jax.jit(lambda k, s: jax.random.split(k, C)[s]), raw, slots),
        "keys_per_slot": (jax.jit(lambda k, s: jax.vmap(
            lambda i: jax.random.fold_in(k, i))(s)), raw, slots),
        "eval_ids": (jax.jit(lambda k, s: evaluation.sample_clients(
            k, C, sim.config.eval.clients or C, s)), raw, slots),
        "label_counts_C": (jax.jit(lambda h, m: jnp.sum(h * m[:, None], axis=0)),
                           fd.label_hist, chosen),
        "label_counts_K": (jax.jit(lambda h, s, v: jnp.sum(h[s] * v[:, None], axis=0)),
                           fd.label_hist, slots, valid),
    }
    out = {}
    for name in PART_NAMES:
        fn, *args = parts[name]
        out[name] = _time(fn, *args, repeats=repeats)
    return out


def measure_one(sets: list[str], repeats: int, parts: bool = True) -> dict:
    """Runs in the child process: build, warm up, time ``repeats`` rounds (then the parts)."""
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
    row = {"build_s": build, "first_s": first, "median_s": med, "min_s": min(times),
           "max_s": max(times), "peak_rss_mb": peak_rss_mb(),
           "updates_per_s": float(m["selected"]) / med, "k": k,
           "sampler": cfg.selection.params.get("sampler", "pivotal"),
           "backend": jax.default_backend()}
    if parts:   # after the rounds, so peak RSS is the round's
        p = measure_parts(sim, state, max(3, repeats))
        row.update({f"{n}_ms": 1e3 * v for n, v in p.items()})
        row["oc_share"] = sum(p[n] for n in OC_PARTS) / med
    return row


def run(workloads: dict, populations, repeats: int, eval_clients: int, out: Path,
        sampler: str = "systematic", parts: bool = True) -> list[dict]:
    rows = []
    for name, w in workloads.items():
        for c in populations:
            sets = overrides(w, c, eval_clients, sampler)
            cmd = [sys.executable, "-m", "bench.population", "--one", json.dumps(sets),
                   "--repeats", str(repeats)] + ([] if parts else ["--no-parts"])
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
            if "oc_share" in row:
                print("      parts (ms, alone, jitted): " + ", ".join(
                    f"{n} {row[n + '_ms']:.2f}" for n in PART_NAMES)
                    + f"; O(C) share of the round {100 * row['oc_share']:.1f} %", flush=True)
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

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.5))
    for name in sorted({r["workload"] for r in rows}):
        mine = [r for r in rows if r["workload"] == name]
        label = f"{name}, K={mine[0]['k']}"
        xs = [r["clients"] for r in mine]
        a.plot(xs, [r["median_s"] for r in mine], "o-", label=label)
        b.plot(xs, [r["peak_rss_mb"] / 1024 for r in mine], "o-", label=label)
        c.plot(xs, [r["updates_per_s"] for r in mine], "o-", label=label)
    for ax, ylabel in ((a, "seconds per round (median)"), (b, "peak RSS (GiB)"),
                       (c, "client updates per second")):
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
    ap.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS),
                    help="a subset of the full workloads (default: all; ignored with --quick)")
    ap.add_argument("--sampler", choices=("systematic", "pivotal"), default="systematic",
                    help="CUP's sampler (selection.sampler)")
    ap.add_argument("--no-parts", action="store_true", help="skip the per-part timings")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    if args.one:
        print(json.dumps(measure_one(json.loads(args.one), repeats, not args.no_parts)))
        return None
    print(f"load average: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f}; {os.cpu_count()} CPUs", flush=True)
    workloads = QUICK if args.quick else {n: WORKLOADS[n] for n in (args.workloads or WORKLOADS)}
    return run(workloads, args.populations, repeats, args.eval_clients, args.out,
               args.sampler, not args.no_parts)


if __name__ == "__main__":
    main()
