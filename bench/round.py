"""Round benchmark: fsjax's engine modes against a sequential PyTorch simulator.

The workload is the CIFAR-10 cross-device benchmark used to rank FL simulators
(pfl-research): 1,000 clients x 50 images (IID), 50 clients per round, batch
10, 5 local steps (one epoch), the small CNN, SGD lr 0.1, FedAvg. One round is
the same work in both frameworks: gather the selected clients' data, train
each client from the global weights, and add the example-weighted mean of the
client deltas to the global weights. The selected clients of every round are
the ones the simulation's selector draws (the same in every mode), so all
configurations run the same rounds on the same data, back to back in one
process.

fsjax is timed through :class:`fsjax.simulation.Simulation` itself (its
``step``), the one round fsjax has: availability, selection, gather, local
training with the configured backend, aggregation and the round's metrics;
client evaluation runs only in the warm-up round. The torch baseline trains
the clients the simulation selects, on the same rows, and runs on CUDA when
the installed torch has it (``--torch-device`` overrides).

Timing rules: round 0 of every configuration is a warm-up (compilation,
oneDNN set-up) reported separately as ``first``; the next ``repeats`` rounds
are timed, each stopped after ``jax.block_until_ready`` on the new global
params; the table shows their median and spread (min..max). Ratios are
``torch median / fsjax median`` from this one run (> 1: fsjax is faster).

Usage::

    python -m bench.round --quick          # a few minutes on a 2-core CPU
    python -m bench.round                  # full settings (meant for a GPU)
    python -m bench.round --tiny           # seconds: smoke test of the script

Writes ``round.csv`` (every measurement) and ``round_scaling.png`` into
``--out`` (default ``bench/results/``). The last line printed is
``speedup_vs_torch=<torch median / best fsjax median>`` (``nan`` without torch).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fsjax import config, data as data_lib, engine, models, simulation

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass(frozen=True)
class Settings:
    """One benchmark configuration (see :data:`PRESETS`)."""

    num_clients: int = 1000          # total clients C
    examples_per_client: int = 50
    clients_per_round: int = 50      # K
    batch_size: int = 10
    local_steps: int = 5
    lr: float = 0.1
    repeats: int = 5                 # timed rounds per configuration, after 1 warm-up
    chunk_sizes: tuple[int, ...] = (1, 5, 10, 25)
    # Scaling in clients per round: every mode up to all_modes_max_k, only the
    # best fsjax mode and torch up to max_k; larger K are skipped.
    scaling_k: tuple[int, ...] = (10, 50, 200, 1000)
    all_modes_max_k: int = 1000
    max_k: int = 1000                # larger K are skipped (time budget)
    scaling_repeats: int = 3
    # Scaling in total clients (chunked mode, clients_per_round fixed).
    scaling_totals: tuple[int, ...] = (1000, 2000, 5000, 10000)
    totals_chunk_size: int = 1
    image_shape: tuple[int, int, int] = (32, 32, 3)
    features: tuple[int, ...] = (32, 64)
    hidden: int = 512
    n_train: int = 50_000            # images to draw client data from
    seed: int = 0
    # Skip a configuration whose estimated memory exceeds this share of what is free.
    memory_share: float = 0.6


PRESETS = {
    "full": Settings(),
    # About 4-5 minutes on a quiet 2-core CPU; K=1000 (about 40 s per round per
    # framework there) only in the full settings.
    "quick": Settings(repeats=5, chunk_sizes=(1, 5, 10), scaling_k=(10, 50, 200, 1000),
                      all_modes_max_k=50, max_k=200, scaling_repeats=2,
                      scaling_totals=(1000, 10000)),
    "tiny": Settings(num_clients=8, examples_per_client=20, clients_per_round=4, batch_size=5,
                     local_steps=2, repeats=2, chunk_sizes=(1, 2), scaling_k=(4, 8),
                     all_modes_max_k=4, max_k=8, scaling_repeats=1, scaling_totals=(8,),
                     image_shape=(8, 8, 3), features=(4, 8), hidden=16, n_train=200),
}


# --------------------------------------------------------------------- measuring


def _reset_peak_rss() -> None:
    """Resets the kernel's peak-RSS mark (Linux); elsewhere the peak is lifetime."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident set size since the last reset, in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def device_peak_mb() -> float:
    """Peak device memory in use (process lifetime) where the backend reports it, else nan."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return peak / 2**20 if peak is not None else float("nan")


def _free_memory_bytes() -> float:
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    try:
        import psutil
        return psutil.virtual_memory().available
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclasses.dataclass
class Measurement:
    """Timings of one configuration (seconds per round)."""

    section: str
    framework: str
    mode: str
    total_clients: int
    clients_per_round: int
    first_s: float = float("nan")
    times: list[float] = dataclasses.field(default_factory=list)
    peak_rss_mb: float = float("nan")
    device_peak_mb: float = float("nan")
    loss: float = float("nan")
    note: str = ""

    @property
    def median(self) -> float:
        return float(np.median(self.times)) if self.times else float("nan")

    @property
    def spread(self) -> tuple[float, float]:
        return (min(self.times), max(self.times)) if self.times else (float("nan"),) * 2

    def row(self, torch_median: float) -> dict[str, Any]:
        lo, hi = self.spread
        q1, q3 = (np.percentile(self.times, [25, 75]) if self.times else (np.nan, np.nan))
        return dict(section=self.section, framework=self.framework, mode=self.mode,
                    total_clients=self.total_clients, clients_per_round=self.clients_per_round,
                    repeats=len(self.times), first_round_s=self.first_s, median_s=self.median,
                    min_s=lo, max_s=hi, q1_s=float(q1), q3_s=float(q3),
                    ms_per_client=1000 * self.median / self.clients_per_round,
                    speedup_vs_torch=torch_median / self.median if self.times else np.nan,
                    peak_rss_mb=self.peak_rss_mb, device_peak_mb=self.device_peak_mb,
                    final_loss=self.loss, note=self.note)


def time_rounds(run_round: Callable, state, schedule: list[np.ndarray], repeats: int,
                m: Measurement):
    """Runs round 0 (warm-up) then ``repeats`` timed rounds; fills ``m``.

    ``run_round(state, round_index, slots) -> (state, loss)`` must return
    arrays that ``jax.block_until_ready`` can wait on (or host values).
    """
    gc.collect()
    _reset_peak_rss()
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        state, loss = run_round(state, r, schedule[r])
        jax.block_until_ready((state, loss))
        dt = time.perf_counter() - t0
        if r == 0:
            m.first_s = dt
        else:
            m.times.append(dt)
    m.loss = float(loss)
    m.peak_rss_mb = peak_rss_mb()
    m.device_peak_mb = device_peak_mb()
    return state


# ------------------------------------------------------------------------- data


def bench_dataset(s: Settings, num_clients: int, ds) -> tuple[data_lib.Dataset, str]:
    """A data set the ``iid`` partition deals into ``examples_per_client`` + 1 images per client.

    Each client gets ``examples_per_client`` training images and one held-out
    image (the simulation needs a client test split; timed rounds do not
    evaluate). Disjoint shards while the data set has enough images; beyond
    that, every image is drawn with replacement from the whole set.
    """
    rng = np.random.default_rng(s.seed + num_clients)
    need = num_clients * (s.examples_per_client + 1)
    if need <= len(ds.y_train):
        idx = rng.permutation(len(ds.y_train))[:need]
        how = "disjoint IID shards"
    else:
        idx = rng.integers(0, len(ds.y_train), need)
        how = "IID, drawn with replacement"
    return dataclasses.replace(ds, x_train=ds.x_train[idx], y_train=ds.y_train[idx]), how


def load_images(s: Settings):
    """Real CIFAR-10 when ``FSJAX_CIFAR10_ZIP`` is set, else generated images of the same shape."""
    path = os.environ.get("FSJAX_CIFAR10_ZIP")
    if path and s.image_shape == (32, 32, 3):
        return data_lib.load_cifar10(path, progress=False), f"CIFAR-10 ({path})"
    ds = data_lib.synthetic(10, s.n_train, 10, s.image_shape, seed=s.seed)
    return ds, (f"synthetic {s.image_shape} uint8 images ({s.n_train}; FSJAX_CIFAR10_ZIP "
                "not set; values do not change the speed)")


# ------------------------------------------------------------------------ fsjax


def bench_config(s: Settings, mode: str, chunk_size: int | None, num_clients: int,
                 k: int) -> config.ExperimentConfig:
    """The workload as an fsjax experiment: IID clients, K random a round, FedAvg.

    Client evaluation runs in round 1 only (the warm-up), so timed rounds are
    availability, selection, gather, local training, aggregation and the
    round's metrics: the simulation's own round, nothing else.
    """
    sets = [f"seed={s.seed}", "rounds=1000000", f"partition.num_clients={num_clients}",
            "partition.name=iid", f"partition.split_test={1 / (s.examples_per_client + 1)}",
            "model.name=cnn", f"model.features={list(s.features)}", f"model.hidden={s.hidden}",
            f"local.steps={s.local_steps}", f"local.batch_size={s.batch_size}",
            f"local.lr={s.lr}", "selection.name=random", f"selection.clients_per_round={k}",
            "eval.every=1000000", f"engine.mode={mode}", f"engine.chunk_size={chunk_size or 0}",
            "engine.shard=false"]
    return config.load(None, overrides=sets)


class FsjaxBench:
    """Times :class:`fsjax.simulation.Simulation` rounds, one simulation per configuration."""

    def __init__(self, s: Settings):
        self.s = s
        model = models.build("cnn", 10, features=s.features, hidden=s.hidden)
        # The same initial weights as a simulation with this seed (for the torch baseline).
        key = jax.random.split(jax.random.PRNGKey(s.seed), 3)[0]
        self.params = models.init_params(model, key, s.image_shape)
        self.n_params = sum(int(p.size) for p in jax.tree.leaves(self.params))
        self._compiled: set[tuple] = set()   # (resolved mode, K, C) already run

    def simulation(self, mode: str, chunk_size: int | None, dataset, num_clients: int,
                   k: int) -> simulation.Simulation:
        return simulation.Simulation(bench_config(self.s, mode, chunk_size, num_clients, k),
                                     dataset=dataset)

    @staticmethod
    def schedule(sim: simulation.Simulation, rounds: int) -> list[np.ndarray]:
        """The clients the simulation selects in rounds 1..``rounds`` (for the torch baseline)."""
        plan = jax.jit(sim.plan_round)
        state = sim.init()
        out = []
        for r in range(rounds):
            _, p, _ = plan(state._replace(round=jnp.int32(r)), sim.data)
            out.append(np.asarray(p.slots)[np.asarray(p.valid)])
        return out

    def memory_estimate(self, mode: str, chunk_size: int | None, k: int) -> float:
        """Rough bytes a round needs beyond the data: the K stacked deltas and
        FedAvg's masked copy of them (one more stack in loop mode), plus per-client
        working copies (params, grads, activations) of what runs at once.
        (Measured: chunked(1) at K=1000 peaked at 18.4 GiB RSS on CPU.)"""
        per_client = 4 * self.n_params
        act = 4 * self.s.batch_size * int(np.prod(self.s.image_shape)) * 40
        mode, chunk_size = engine.resolve_mode(mode, chunk_size)
        at_once = {"vmap": k, "chunked": chunk_size or 1, "loop": 1}[mode]
        if mode == "chunked":  # reduced while training: no K-stacked deltas
            return 4 * per_client + at_once * (3 * per_client + act)
        return k * per_client * (3 if mode == "loop" else 2) + at_once * (3 * per_client + act)

    def measure(self, label: str, mode: str, chunk_size: int | None, dataset, num_clients: int,
                k: int, repeats: int, section: str) -> Measurement:
        m = Measurement(section, "fsjax", label, num_clients, k)
        sim = self.simulation(mode, chunk_size, dataset, num_clients, k)
        key = (engine.resolve_mode(mode, chunk_size), k, num_clients)
        if key in self._compiled:
            m.note = "same round as " + _label(*key[0])
        self._compiled.add(key)

        def run_round(state, r, slots):
            state, metrics = sim.step(state)
            return state, metrics["train_loss"]

        time_rounds(run_round, sim.init(), [None] * (repeats + 1), repeats, m)
        return m


def _label(mode: str, chunk_size: int | None) -> str:
    return f"chunked({chunk_size})" if mode == "chunked" else mode


# ------------------------------------------------------------------------ torch


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


class TorchBench:
    """The sequential PyTorch simulator on the same data and initial weights."""

    def __init__(self, s: Settings, flax_params, device: str | None = None):
        import torch
        from bench import torch_baseline as tb
        self.tb, self.s, self.flax_params = tb, s, flax_params
        self.threads = tb.set_threads()
        # Like for like: a CUDA build of torch runs on the GPU (the pinned bench
        # extra is a CPU build, so on a GPU machine it stays on the CPU).
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")

    def measure(self, x, y, n, schedule, repeats: int, section: str, total: int) -> Measurement:
        s, tb = self.s, self.tb
        net = tb.TorchCNN(10, s.features, s.hidden, s.image_shape)
        tb.load_flax_params(net, self.flax_params)
        sim = tb.SequentialFedAvg(net, x, y, n, lr=s.lr, batch_size=s.batch_size,
                                  steps=s.local_steps, seed=s.seed, device=self.device)
        m = Measurement(section, "torch", "torch (sequential)", total, len(schedule[0]))

        def run(state, r, slots):
            return state, sim.round(slots)

        time_rounds(run, None, schedule, repeats, m)
        return m


# ------------------------------------------------------------------------ report


def machine_description(tbench: "TorchBench | None") -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import jaxlib
    parts = [f"{cpu}, {os.cpu_count()} cores", f"jax {jax.__version__}",
             f"jaxlib {jaxlib.__version__} ({jax.default_backend()}: {jax.devices()[0].device_kind})"]
    if tbench:
        import torch
        parts.append(f"torch {torch.__version__} ({tbench.device}, {tbench.threads} threads)")
    else:
        parts.append("torch not installed")
    try:
        parts.append("load average %.2f %.2f %.2f" % os.getloadavg())
    except OSError:
        pass
    flags = os.environ.get("XLA_FLAGS")
    if flags:
        parts.append(f"XLA_FLAGS={flags}")
    return "; ".join(parts)


def _fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v != v else f"{v:.{digits}f}"


def print_table(title: str, ms: list[Measurement], torch_by_k: dict[int, float]) -> None:
    print(f"\n{title}")
    head = (f"{'mode':<24}{'C':>6}{'K':>6}{'first s':>9}{'median s':>10}{'min..max s':>15}"
            f"{'ms/client':>10}{'speedup':>9}{'peak RSS MiB':>14}{'loss':>8}  note")
    print(head)
    print("-" * len(head))
    for m in ms:
        lo, hi = m.spread
        sp = torch_by_k.get(m.clients_per_round, float("nan")) / m.median \
            if m.times else float("nan")
        spread = f"{_fmt(lo)}..{_fmt(hi)}" if m.times else "-"
        print(f"{m.mode:<24}{m.total_clients:>6}{m.clients_per_round:>6}{_fmt(m.first_s, 2):>9}"
              f"{_fmt(m.median):>10}{spread:>15}{_fmt(1000 * m.median / m.clients_per_round, 1):>10}"
              f"{_fmt(sp, 2):>9}{_fmt(m.peak_rss_mb, 0):>14}{_fmt(m.loss, 3):>8}  {m.note}")


def write_csv(path: Path, ms: list[Measurement], torch_by_k: dict[int, float],
              meta: dict) -> None:
    rows = [dict(m.row(torch_by_k.get(m.clients_per_round, float("nan"))
                       if m.section != "scaling_total" else float("nan")), **meta) for m in ms]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot(path: Path, ms: list[Measurement]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    by_mode: dict[str, list[Measurement]] = {}
    for m in ms:
        if m.section in ("main", "scaling_k") and m.times:
            by_mode.setdefault(m.mode, []).append(m)
    for mode, pts in by_mode.items():
        pts = sorted({p.clients_per_round: p for p in pts}.values(),
                     key=lambda p: p.clients_per_round)
        style = dict(color="black", linestyle="--") if pts[0].framework == "torch" else {}
        ax.loglog([p.clients_per_round for p in pts], [p.median for p in pts], marker="o",
                  label=mode, **style)
    ax.set_xlabel("clients per round")
    ax.set_ylabel("seconds per round (median)")
    ax.set_title("time per round vs clients per round")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    tot = sorted((m for m in ms if m.section == "scaling_total" and m.times),
                 key=lambda m: m.total_clients)
    if tot:
        ax2.semilogx([m.total_clients for m in tot], [m.median for m in tot], "o-",
                     label="s / round")
        ax2.set_xlabel("total clients")
        ax2.set_ylabel("seconds per round (median)")
        ax2.set_ylim(bottom=0)
        twin = ax2.twinx()
        twin.semilogx([m.total_clients for m in tot], [m.peak_rss_mb / 1024 for m in tot],
                      "s--", color="tab:red", label="peak RSS")
        twin.set_ylabel("peak RSS (GiB)", color="tab:red")
        twin.set_ylim(bottom=0)
        ax2.set_title(f"{tot[0].mode}, {tot[0].clients_per_round} clients per round")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -------------------------------------------------------------------------- run


def run(s: Settings, out: Path, use_torch: bool = True, modes: list[str] | None = None,
        torch_device: str | None = None) -> dict:
    """Runs every section; prints the tables; writes CSV and plot. Returns a summary."""
    out.mkdir(parents=True, exist_ok=True)
    use_torch = use_torch and torch_available()
    fs = FsjaxBench(s)
    tbench = TorchBench(s, fs.params, torch_device) if use_torch else None
    ds, data_desc = load_images(s)
    data, how = bench_dataset(s, s.num_clients, ds)
    k = s.clients_per_round
    rounds = max(s.repeats, s.scaling_repeats) + 1
    # The torch baseline trains the same clients on the same rows as the simulation.
    ref = fs.simulation("chunked", 1, data, s.num_clients, k)
    x, y, n = (np.array(a) for a in (ref.data.x, ref.data.y, ref.data.n))  # writable copies
    sched = fs.schedule(ref, rounds)
    del ref

    print("fsjax round benchmark: CIFAR-10 cross-device workload (pfl-research)")
    print(f"data: {data_desc}; {s.num_clients} clients x {s.examples_per_client} images "
          f"({how})")
    print(f"round: {k} clients/round, batch {s.batch_size}, {s.local_steps} local steps, "
          f"SGD lr {s.lr}, FedAvg; CNN {s.features} + dense {s.hidden} "
          f"({fs.n_params:,} params); gather + local training + aggregation")
    print(f"machine: {machine_description(tbench)}")
    print(f"timing: seconds per round; round 0 = warm-up incl. compilation ('first', excluded); "
          f"median and min..max of {s.repeats} timed rounds (scaling: {s.scaling_repeats}); "
          "block_until_ready before every stop")
    print("speedup = torch median / mode median (> 1 means fsjax is faster); one run, one machine")
    sys.stdout.flush()

    configs = [("vmap", "vmap", None)]
    configs += [(f"chunked({c})", "chunked", c) for c in s.chunk_sizes]
    configs += [("loop", "loop", None)]
    auto = engine.resolve_mode("auto")
    configs += [(f"auto -> {_label(*auto)}", "auto", None)]
    if modes:
        configs = [c for c in configs if c[1] in modes or c[0] in modes]
        if not configs:
            raise ValueError(f"modes={modes}: expected at least one of vmap, chunked, loop, "
                             "auto")

    results: list[Measurement] = []
    main: list[Measurement] = []
    torch_median = float("nan")
    if tbench:
        tm = tbench.measure(x, y, n, sched, s.repeats, "main", s.num_clients)
        torch_median = tm.median
        main.append(tm)
    for label, mode, cs in configs:
        main.append(fs.measure(label, mode, cs, data, s.num_clients, k, s.repeats, "main"))
        print(f"  measured {label}: {main[-1].median:.3f} s/round", file=sys.stderr, flush=True)
    results += main
    fs_main = [m for m in main if m.framework == "fsjax"]
    best = min(fs_main, key=lambda m: m.median)
    best_cfg = next(c for c in configs if c[0] == best.mode)
    best_resolved = engine.resolve_mode(best_cfg[1], best_cfg[2])
    best_cfg = (_label(*best_resolved), *best_resolved)   # "auto" runs as what it resolves to
    torch_by_k = {k: torch_median}
    print_table(f"Round time at {k} clients/round ({s.num_clients} clients); "
                "speedup = torch/fsjax, > 1 = fsjax faster", main, torch_by_k)

    # ---- scaling in clients per round
    scal: list[Measurement] = []
    skipped: list[str] = []
    free = _free_memory_bytes()
    for kk in s.scaling_k:
        if kk == k:
            scal += [m for m in main]
            continue
        if kk > s.num_clients:
            skipped.append(f"K={kk} (more than {s.num_clients} clients)")
            continue
        if kk > s.max_k:
            skipped.append(f"K={kk}: every mode and torch (time budget of these settings; "
                           "the full settings run it)")
            continue
        run_cfgs = configs if kk <= s.all_modes_max_k else [best_cfg]
        if kk > s.all_modes_max_k:
            skipped.append(f"K={kk}: all modes but the best at K={k} ({best_cfg[0]}) and "
                           f"torch (time budget: every mode only up to K={s.all_modes_max_k})")
        for label, mode, cs in run_cfgs:
            need = fs.memory_estimate(mode, cs, kk)
            if need > s.memory_share * free:
                skipped.append(f"K={kk} {label}: needs ~{need / 2**30:.1f} GiB, "
                               f"{free / 2**30:.1f} GiB free")
                continue
            scal.append(fs.measure(label, mode, cs, data, s.num_clients, kk,
                                   s.scaling_repeats, "scaling_k"))
            print(f"  measured {label} K={kk}: {scal[-1].median:.3f} s/round",
                  file=sys.stderr, flush=True)
        if tbench:
            sch = fs.schedule(fs.simulation("chunked", 1, data, s.num_clients, kk),
                              s.scaling_repeats + 1)
            scal.append(tbench.measure(x, y, n, sch, s.scaling_repeats, "scaling_k",
                                       s.num_clients))
            torch_by_k[kk] = scal[-1].median
    results += [m for m in scal if m.section == "scaling_k"]
    print_table("Scaling: clients per round (C fixed); speedup = torch/fsjax at the same K",
                sorted(scal, key=lambda m: (m.clients_per_round, m.framework != "torch")),
                torch_by_k)
    for kk in sorted(set(m.clients_per_round for m in scal)):
        f = [m for m in scal if m.clients_per_round == kk and m.framework == "fsjax"]
        if f:
            b = min(f, key=lambda m: m.median)
            print(f"  K={kk}: best fsjax {b.mode} {b.median:.3f} s/round "
                  f"({1000 * b.median / kk:.1f} ms/client), torch "
                  f"{_fmt(torch_by_k.get(kk, float('nan')))} s/round")
    for sk in skipped:
        print(f"  skipped: {sk}")
    if max(s.scaling_k) > s.all_modes_max_k:
        print("  (full settings run every mode at every K; meant for a GPU)")

    # ---- scaling in total clients (chunked, fixed K)
    del x, y
    tot: list[Measurement] = []
    label = f"chunked({s.totals_chunk_size})"
    for total in s.scaling_totals:
        if total == s.num_clients and any(m.mode == label for m in main):
            m0 = next(m for m in main if m.mode == label)
            tot.append(dataclasses.replace(m0, section="scaling_total", times=list(m0.times)))
            continue
        data = None
        gc.collect()
        dt, how_t = bench_dataset(s, total, ds)
        need = dt.x_train.nbytes * 2 + fs.memory_estimate("chunked", s.totals_chunk_size, k)
        if need > s.memory_share * _free_memory_bytes():
            skipped.append(f"total={total}: needs ~{need / 2**30:.1f} GiB")
            continue
        m = fs.measure(label, "chunked", s.totals_chunk_size, dt, total, k, s.scaling_repeats,
                       "scaling_total")
        m.note = how_t
        tot.append(m)
        print(f"  measured {label} C={total}: {m.median:.3f} s/round", file=sys.stderr,
              flush=True)
        del dt
    results += tot
    print_table(f"Scaling: total clients ({label}, {k} clients/round; client data on the "
                "device, peak RSS includes it)", tot, {})

    meta = dict(data=data_desc, machine=machine_description(tbench))
    write_csv(out / "round.csv", results, torch_by_k, meta)
    plot(out / "round_scaling.png", results)
    speedup = torch_median / best.median
    print(f"\nwrote {out / 'round.csv'} and {out / 'round_scaling.png'}")
    try:
        print("load average at the end: %.2f %.2f %.2f (this run keeps about 2 cores busy)"
              % os.getloadavg())
    except OSError:
        pass
    print(f"best fsjax mode at K={k}: {best.mode} {best.median:.3f} s/round; torch "
          f"{_fmt(torch_median)} s/round; speedup = torch/fsjax (> 1: fsjax faster)")
    print(f"speedup_vs_torch={speedup:.3f}" if speedup == speedup else "speedup_vs_torch=nan")
    return dict(best=best.mode, speedup=speedup, results=results)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.round", description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="settings for a 2-core CPU (minutes)")
    g.add_argument("--tiny", action="store_true", help="a smoke run (under a minute)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for CSV and plot")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    p.add_argument("--repeats", type=int, help="timed rounds per configuration")
    p.add_argument("--modes", nargs="+",
                   help="only these modes (vmap chunked loop auto)")
    p.add_argument("--torch-device", help="torch's device (default: cuda if available, else cpu)")
    a = p.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)   # progress on stderr stays in order
    s = PRESETS["quick" if a.quick else "tiny" if a.tiny else "full"]
    if a.repeats:
        if a.repeats < 1:
            p.error(f"--repeats={a.repeats}: expected >= 1")
        s = dataclasses.replace(s, repeats=a.repeats)
    return run(s, a.out, use_torch=not a.no_torch, modes=a.modes, torch_device=a.torch_device)


if __name__ == "__main__":
    main()
