"""The CUP study (REFERENCE.md section B): CUP against the paper's baselines on CIFAR-10.

N = 100 clients on the label ring (client i holds labels i and i+1 mod 10, 100
training images), m = 10 a round, T = 50 rounds, availability replayed from the
shipped phone traces with each seed starting them at its own slot, 1 epoch of
batch 32 (SGD 0.01, gradients clipped at norm 5) from ``cup_study.yaml``. Arms
(:data:`ARMS`): CUP with Horvitz-Thompson aggregation, the paper's baselines and
fsjax's own fair_select, 5 seeds each; then a longer run (T = 200, 3 seeds) of
cup, uniform_available and fedavg_random. Both grids are ``fsjax sweep``s
(nested MLflow runs, resumable: the same command finishes only what is
missing), run seed by seed so a stopped study holds whole seeds. Writes the
tables (mean ± 95% CI over seeds, and each arm's paired difference from
uniform_available), the figures (mean and 95% CI band per arm) and the wall
time into ``experiments/README.md``.

    python -m experiments.cup_study                # the full study (see README for the time)
    python -m experiments.cup_study --quick        # minutes: 20 clients, 3 rounds, 1 seed
    python -m experiments.cup_study --from-results experiments/cup_out/results.json
    python -m experiments.cup_study --from-results experiments/cup_out   # runs finished so far
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from experiments import study

BASE = study.REPO / "experiments" / "cup_study.yaml"
REFERENCE = "uniform_available"

ARMS = {
    "cup": ["selection.name=cup", "aggregation.name=horvitz_thompson"],
    "fedavg_random": ["selection.name=fedavg_random"],
    "uniform_available": ["selection.name=uniform_available"],
    "fedprox": ["selection.name=uniform_available", "local.mu=0.01"],
    "qffl": ["selection.name=uniform_available", "aggregation.name=qffl", "aggregation.q=1",
             "aggregation.lipschitz=1"],
    "afl": ["selection.name=uniform_available", "aggregation.name=afl"],
    "fairfedcs": ["selection.name=fairfedcs"],
    "fedfv": ["selection.name=uniform_available", "aggregation.name=fedfv"],
    "fair_select": ["selection.name=fair_select"],
}
LONG_ARMS = ("cup", "uniform_available", "fedavg_random")
SEEDS = (0, 1, 2, 3, 4)
LONG_SEEDS = (0, 1, 2)
LONG_ROUNDS = 200

ACCURACY = ("accuracy_global", "accuracy_mean", "accuracy_jain")
FAIRNESS = ("utility_cv", "utility_jain", "worst10_utility", "selection_gap",
            "conditional_selection_gap", "participation_gini")
COLUMNS = ACCURACY + FAIRNESS
# Whole-run counts: the per-round ones as each run's mean over its rounds.
PER_ROUND = ("available", "selected", "participants")
EVER = ("ever_available", "ever_participated")
WINDOW = 5          # accuracies also as each run's mean over its last WINDOW rounds
ALL_ROUNDS = 10 ** 9
FIGURE_METRICS = COLUMNS + ("available", "participants", "train_loss")
README_PANELS = ("accuracy_global", "accuracy_jain", "utility_cv", "worst10_utility",
                 "selection_gap", "participation_gini")

QUICK = ["rounds=3", "partition.num_clients=20", "partition.examples_per_client=40",
         "selection.clients_per_round=4", "local.steps=2", "data.test_subset=200"]
QUICK_SEEDS = (0,)
QUICK_LONG_SEEDS = (0,)
QUICK_LONG_ROUNDS = 5

def differences(results: dict) -> str:
    """Every difference from the study's setting, the model and the test set
    read from the runs' own configs (``config`` in each run; ``cup_study.yaml``
    for results written without it)."""
    import yaml

    cfg = next(iter(results["main"].values()))[0].get("config") or \
        yaml.safe_load(BASE.read_text())
    model = cfg.get("model", {})
    name = model.get("name", "?")
    hidden = model.get("hidden") or (model.get("params") or {}).get("hidden")
    what = {"mlp": f"a small MLP (hidden layers {hidden}) on the raw pixels",
            "cnn": "fsjax's CNN (2 conv layers, 2.16 M parameters)"}.get(name, f"`{name}`")
    subset = (cfg.get("data") or {}).get("test_subset", 0)
    test = ("all 10,000 test images, as the study" if not subset else
            f"{subset:,} test images (`data.test_subset`, a cut for the per-round cost; "
            f"the study uses all 10,000)")
    return f"""\
- **Model**: {what}, trained from scratch by every client; the study fine-tunes
  only the head of an ImageNet-pretrained ResNet-18 (no pretrained weights can be
  fetched here). Accuracies are therefore far lower than the study's, and a client's
  accuracy gain in a round is noisier.
- **Evaluation**: the global model on {test}; each client's accuracy by the study's
  formula over the labels it holds (`eval.client_accuracy: label_set`).
- **Local epoch**: 4 updates of batch 32 drawn from per-epoch reshuffles of the
  client's 100 images (the 4th batch takes 28 images of a second pass); the study
  goes through the 100 images once, unshuffled, with a last batch of 4.
- **Availability**: fsjax's time-slot replay of the traces (charging and on wifi for
  most of a one-hour slot) from a seeded random start per seed; the study reads one
  bit per event line from the start for every seed (`rule: study_events`, not used
  here).
- **Seeds**: one seed sets the trace start, the model initialisation, the data
  shuffles and the selection draws; the same seed in two arms shares the first three
  (the paired differences rely on this).
"""


def variant_label(key: str, arms: dict) -> str:
    """``"T=50, 5 seeds"`` from the runs themselves (so --from-results needs no
    flags); ``"1-2 seeds"`` where arms have different numbers (a partial study)."""
    runs = next(iter(arms.values()))
    rounds = max(len(v) for v in runs[0]["metrics"].values())
    counts = sorted({len(r) for r in arms.values()})
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"T={rounds}, {n} seed{'s' * (n != '1')}"


def seconds_table(arms: dict) -> str:
    """Seconds per round of each arm (mean over its runs; compile time included)."""
    lines = ["| arm | runs | seconds per run | seconds per round |", "|---|---|---|---|"]
    for name, runs in arms.items():
        rounds = [max(len(v) for v in r["metrics"].values()) for r in runs]
        secs = [r["seconds"] for r in runs]
        lines.append(f"| {name} | {len(runs)} | {np.mean(secs):.0f} | "
                     f"{np.mean([s / t for s, t in zip(secs, rounds)]):.2f} |")
    return "\n".join(lines) + "\n"


def reading(arms: dict, columns, reference: str = REFERENCE, window: int = 0) -> str:
    """Per metric, which arms' paired 95% CI against ``reference`` excludes 0 (and
    in which direction), and that the others are not distinguishable from it."""
    found = study.distinguishable(arms, columns, reference, window)
    others = [a for a in arms if a != reference]
    pairs = max((study.paired_difference(arms[a], arms[reference], c, window)["n"]
                 for a in others for c in columns), default=0)
    if pairs < 2:
        return (f"- {pairs} seed{'s' * (pairs != 1)} in common with {reference}: no "
                f"intervals, nothing can be called distinguishable.\n")
    lines = []
    for metric, hits in found.items():
        if not hits:
            lines.append(f"- `{metric}`: no arm is distinguishable from {reference}.")
            continue
        parts = [f"{name} {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
                 for name, d in hits]
        rest = [a for a in others if a not in {n for n, _ in hits}]
        tail = f"; not distinguishable: {', '.join(rest)}" if rest else ""
        lines.append(f"- `{metric}`: {'; '.join(parts)}{tail}.")
    return "\n".join(lines) + "\n"


def report(results: dict, timing: dict | None, planned: int | None = None) -> str:
    """The markdown the study writes into ``experiments/README.md``; with
    ``planned`` (results read from a study still running or stopped), it opens
    by saying how many of the planned runs finished."""
    main = results["main"]
    parts = []
    runs = sum(len(r) for grid in results.values() for r in grid.values())
    if planned is not None and runs < planned:
        parts.append(f"**Partial results: {runs} of the {planned} planned runs had "
                     f"finished** (whole seeds first; the study was still running or "
                     f"stopped).\n")
    if timing and timing.get("wall_s") is not None:
        when = (f"wall time {timing['wall_s'] / 60:.1f} min on this machine (2 shared CPU "
                f"cores; main grid {timing['main_s'] / 60:.1f} min, long runs "
                f"{timing['long_s'] / 60:.1f} min)")
    else:
        when = study.time_note(results, None)
    parts.append(f"{runs} runs, {when}. Tables: mean ± half-width of the 95% confidence "
                 f"interval over seeds (Student t; no interval with one seed). Paired "
                 f"differences: each seed's value minus {REFERENCE}'s with the same seed "
                 f"(same trace start and initial model), mean ± 95% CI; **bold** where "
                 f"the interval excludes 0 (distinguishable).\n")
    label = variant_label("main", main)
    parts.append(f"**Main grid ({label}), final round**\n\n{study.ci_table(main, ACCURACY)}\n"
                 f"{study.ci_table(main, FAIRNESS)}")
    if REFERENCE in main:
        parts.append(f"**Paired difference from {REFERENCE} ({label}), final round**\n\n"
                     f"{study.paired_table(main, ACCURACY, REFERENCE)}\n"
                     f"{study.paired_table(main, FAIRNESS, REFERENCE)}")
        parts.append(f"**Accuracies as each run's mean over its last {WINDOW} rounds** "
                     f"(steadier than the final round)\n\n"
                     f"{study.ci_table(main, ACCURACY, window=WINDOW)}\n"
                     f"{study.paired_table(main, ACCURACY, REFERENCE, window=WINDOW)}")
    counts = [c for c in PER_ROUND if any(c in r["metrics"] for rr in main.values()
                                          for r in rr)]
    ever = [c for c in EVER if any(c in r["final"] for rr in main.values() for r in rr)]
    if counts:
        parts.append(f"**Clients per round** (each run's mean over its rounds)\n\n"
                     f"{study.ci_table(main, counts, digits=2, window=ALL_ROUNDS)}")
    if ever:
        parts.append(f"**Clients ever available / ever participating** (of "
                     f"{_num_clients(main)})\n\n{study.ci_table(main, ever, digits=1)}")
    parts.append(f"**Time per arm** (this machine, shared; compile included)\n\n"
                 f"{seconds_table(main)}")
    if "long" in results and results["long"]:
        long = results["long"]
        llabel = variant_label("long", long)
        parts.append(f"**Long runs ({llabel}), final round**\n\n"
                     f"{study.ci_table(long, COLUMNS)}")
        if REFERENCE in long:
            parts.append(f"**Long runs: paired difference from {REFERENCE}**\n\n"
                         f"{study.paired_table(long, COLUMNS, REFERENCE)}")
    if REFERENCE in main:
        parts.append(f"**What is distinguishable** (generated: paired 95% CI against "
                     f"{REFERENCE} excludes 0; {label}, final round)\n\n"
                     f"{reading(main, COLUMNS)}")
        if "long" in results and REFERENCE in results.get("long", {}):
            parts.append(f"Long runs ({variant_label('long', results['long'])}):\n\n"
                         f"{reading(results['long'], COLUMNS)}")
    parts.append(f"**Differences from the study's setting**\n\n{differences(results)}")
    return "\n".join(parts)


def _num_clients(arms: dict) -> str:
    n = next(iter(arms.values()))[0]["final"].get("num_clients")
    return f"{n:.0f}" if n else "N"


def _run(args, out: Path, quick: bool) -> tuple[dict, dict]:
    extra = QUICK if quick else []
    seeds = args.seeds or list(QUICK_SEEDS if quick else SEEDS)
    long_seeds = args.long_seeds or list(QUICK_LONG_SEEDS if quick else LONG_SEEDS)
    long_rounds = args.long_rounds or (QUICK_LONG_ROUNDS if quick else LONG_ROUNDS)
    experiment = "cup_study_quick" if quick else "cup_study"
    metrics = COLUMNS
    t0 = time.perf_counter()
    main = study.run_grid(BASE, ARMS, {"main": []}, seeds, out=out / "main",
                          experiment=experiment, tracking_uri=args.tracking_uri, extra=extra,
                          workers=args.workers, metrics=metrics, seed_major=True)["main"]
    t1 = time.perf_counter()
    results = {"main": main}
    if not args.no_long and long_seeds:
        long_arms = {k: ARMS[k] for k in LONG_ARMS}
        results["long"] = study.run_grid(
            BASE, long_arms, {"long": []}, long_seeds, out=out / "long",
            experiment=experiment, tracking_uri=args.tracking_uri,
            extra=[*extra, f"rounds={long_rounds}", "name=cup_study_long"],
            workers=args.workers, metrics=metrics, seed_major=True)["long"]
    t2 = time.perf_counter()
    timing = dict(wall_s=t2 - t0, main_s=t1 - t0, long_s=t2 - t1)
    return results, timing


def load(path: str | Path) -> dict:
    """The results of a study: its ``results.json``, or its output directory
    (``main/`` and ``long/``), read from the runs finished so far (a study
    still running, or stopped early)."""
    path = Path(path)
    if path.is_dir() and (path / "main").is_dir():
        results = {"main": study.collect_grid(path / "main").get("main", {})}
        if (path / "long").is_dir():
            results["long"] = study.collect_grid(path / "long").get("long", {})
        return results
    if path.is_dir():
        path = path / "results.json"
    return study.load_results(path)


def main(argv=None) -> int:
    p = study.parser(__doc__.splitlines()[0], "cup_out",
                     seeds_help="seeds of the main grid (default 0-4; 0 with --quick)")
    p.add_argument("--long-seeds", type=int, nargs="+", default=None,
                   help="seeds of the long runs (default 0 1 2; 0 with --quick)")
    p.add_argument("--long-rounds", type=int, default=None,
                   help=f"rounds of the long runs (default {LONG_ROUNDS}; "
                   f"{QUICK_LONG_ROUNDS} with --quick)")
    p.add_argument("--no-long", action="store_true", help="skip the long runs")
    args = p.parse_args(argv)
    out = Path(args.out or study.REPO / "experiments" / ("cup_out_quick" if args.quick
                                                            else "cup_out"))
    out.mkdir(parents=True, exist_ok=True)
    planned = None
    if args.from_results:
        results = load(args.from_results)
        src = Path(args.from_results)
        timing_path = (src if src.is_dir() else src.parent) / "timing.json"
        timing = json.loads(timing_path.read_text()) if timing_path.is_file() else None
        if src.is_dir() and not (src / "results.json").is_file():
            planned = len(ARMS) * len(args.seeds or SEEDS) + (
                0 if args.no_long else len(LONG_ARMS) * len(args.long_seeds or LONG_SEEDS))
    else:
        results, timing = _run(args, out, args.quick)
        (out / "results.json").write_text(json.dumps(results))
        (out / "timing.json").write_text(json.dumps(timing))
    if not results.get("main"):
        raise ValueError(f"{args.from_results}: no finished run of the main grid (expected "
                         "the results.json or the output directory of "
                         "python -m experiments.cup_study)")
    results = {k: v for k, v in results.items() if v}
    figs = study.ci_figures(results["main"], FIGURE_METRICS, out / "figures", "cup_")
    panels = [study.ci_panels(results["main"], README_PANELS, out / "figures" / "cup_main.png",
                              f"CUP study, {variant_label('main', results['main'])}: ")]
    if results.get("long"):
        figs += study.ci_figures(results["long"], FIGURE_METRICS, out / "figures",
                                 "cup_long_")
        panels.append(study.ci_panels(results["long"], README_PANELS,
                                      out / "figures" / "cup_long.png",
                                      f"CUP study, long runs, "
                                      f"{variant_label('long', results['long'])}: "))
    text = report(results, timing, planned)
    (out / "table.md").write_text(text)
    print(text)
    print(f"figures: {len(figs)} in {out / 'figures'} (cup_<metric>.png), panels "
          f"{', '.join(str(x) for x in panels)}")
    if args.readme or not args.quick:
        for path in panels:
            shutil.copyfile(path, study.REPO / "experiments" / "figures" / path.name)
        figures = "\n".join(f"![{p.stem}](figures/{p.name})" for p in panels)
        study.write_readme_section("cup-study", f"{text}\n{figures}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
