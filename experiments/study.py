"""What the study drivers share: a grid of runs (an ``fsjax sweep``), summaries
over seeds, comparison figures and the markdown tables in ``experiments/README.md``.

A study is a list of *arms* (named override lists, e.g. one per selection
strategy) crossed with *variants* (e.g. availability models) and seeds, run by
:func:`fsjax.sweep.run_sweep` with the two as grid axes: each run is a normal
fsjax run directory under ``OUT/runs`` and one MLflow run (tagged with arm,
variant and seed) nested under the study's parent run; running a study again
with the same ``--out`` finishes only what is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from fsjax import metrics, plots, sweep

REPO = Path(__file__).resolve().parents[1]
README = REPO / "experiments" / "README.md"


def run_grid(base: str | Path, arms: dict[str, Sequence[str]],
             variants: dict[str, Sequence[str]], seeds: Sequence[int], *, out: Path,
             experiment: str, tracking_uri: str | None, extra: Sequence[str] = (),
             workers: int = 1, log=print) -> dict:
    """Runs every (variant, arm, seed) as an ``fsjax sweep``; returns ``results[variant][arm]``.

    The sweep (:func:`fsjax.sweep.run_sweep`) keeps each run's directory under
    ``out/runs``, nests the runs under one MLflow parent run (tagged with
    ``variant``, ``arm`` and ``seed``), skips runs a previous call finished and
    writes ``summary.csv``/``summary.md`` (mean ± 95% CI). Each entry of
    ``results[variant][arm]`` is a dict with ``seed``, ``seconds``, ``metrics``
    (per-round lists) and ``final`` (last finite value of each metric).
    """
    axes = [("variant", {k: list(v) for k, v in variants.items()}),
            ("arm", {k: list(v) for k, v in arms.items()})]
    sweep.run_sweep(base, axes, seeds, overrides=extra, out=out, workers=workers,
                    tracking_uri=None if tracking_uri == "none" else tracking_uri,
                    experiment=experiment, no_track=tracking_uri == "none", say=log)
    results: dict = {}
    for child, hist, done in sweep.load_children(out)[1]:
        point = child["point"]
        results.setdefault(point["variant"], {}).setdefault(point["arm"], []).append(
            dict(seed=child["seed"], seconds=done["seconds"], metrics=hist,
                 final={k: _last_finite(v) for k, v in hist.items()}))
    (out / "results.json").write_text(json.dumps(results))
    return results


def parser(description: str, out_name: str) -> argparse.ArgumentParser:
    """The options every study driver has; default output ``experiments/<out_name>[_quick]``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a few-minute version")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="default 0 1 2 (0 with --quick)")
    p.add_argument("--out", default=None,
                   help=f"output dir (default experiments/{out_name}[_quick])")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlruns.db); "
                   "'none' to skip MLflow")
    p.add_argument("--readme", action="store_true",
                   help="write the table into experiments/README.md (default: full runs only)")
    p.add_argument("--from-results", default=None, metavar="JSON",
                   help="redo figures and tables from a results.json instead of running")
    p.add_argument("--workers", type=int, default=1, help="runs at once (default 1)")
    return p


def run_or_load(args: argparse.Namespace, experiment: str, out_name: str, base: str | Path,
                arms: dict[str, Sequence[str]], variants: dict[str, Sequence[str]],
                extra: Sequence[str]) -> tuple[dict, Path, float | None]:
    """``(results, out, wall seconds)``: the grid run now (MLflow experiment
    ``experiment``, output ``experiments/<out_name>``; both get ``_quick`` with
    ``--quick``), or read back from ``--from-results`` (wall ``None``)."""
    suffix = "_quick" if args.quick else ""
    out = Path(args.out or REPO / "experiments" / f"{out_name}{suffix}")
    out.mkdir(parents=True, exist_ok=True)
    if args.from_results:
        return load_results(args.from_results), out, None
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    t0 = time.perf_counter()
    results = run_grid(base, arms, variants, seeds, out=out, experiment=f"{experiment}{suffix}",
                       tracking_uri=args.tracking_uri, extra=extra,
                       workers=getattr(args, "workers", 1))
    return results, out, time.perf_counter() - t0


def num_seeds(results: dict) -> int:
    return len({r["seed"] for arms in results.values() for runs in arms.values() for r in runs})


def load_results(path: str | Path) -> dict:
    """The ``results.json`` a grid wrote, to redo figures and tables without rerunning."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--from-results: {path} is not a file (expected the results.json "
                         "a study run wrote)")
    return json.loads(path.read_text())


def time_note(results: dict, wall: float | None) -> str:
    """``wall time N min``, or (report redone from a results file) the runs' summed time."""
    if wall is not None:
        return f"wall time {wall / 60:.1f} min"
    total = sum(r["seconds"] for arms in results.values() for runs in arms.values()
                for r in runs)
    return f"the runs' times sum to {total / 60:.1f} min"


def _last_finite(values) -> float:
    finite = [float(v) for v in values if not math.isnan(v)]
    return finite[-1] if finite else float("nan")


def curves(runs: list[dict], metric: str):
    """Mean, min and max over seeds of a metric's per-round curve."""
    y = np.array([r["metrics"][metric] for r in runs], float)
    return y.mean(0), y.min(0), y.max(0)


def comparison_figures(results: dict, metric_names: Sequence[str], out: Path,
                       prefix: str) -> list[Path]:
    """One figure per metric: a panel per variant, a line (mean) and band (min-max) per arm."""
    paths = []
    for metric in metric_names:
        hist, band = {}, {}
        for vname, arms in results.items():
            for aname, runs in arms.items():
                mean, lo, hi = curves(runs, metric)
                hist.setdefault(aname, {})[vname] = mean
                band.setdefault(aname, {})[vname] = (lo, hi)
        paths.append(plots.plot_overlay(hist, list(results), out / f"{prefix}{metric}.png",
                                        band=band, title=f"{metric} (mean, min-max over seeds)"))
    return paths


def run_value(run: dict, metric: str, window: int = 0) -> float:
    """The run's final value of ``metric``, or with ``window`` the mean of its last
    ``window`` finite per-round values (steadier where rounds swing, as with 5
    non-IID clients a round)."""
    if not window:
        return run["final"][metric]
    finite = [v for v in run["metrics"][metric] if not math.isnan(v)]
    return float(np.mean(finite[-window:])) if finite else float("nan")


def markdown_table(results: dict, columns: Sequence[str], digits: int = 3,
                   window: int = 0) -> str:
    """Per variant, a table of the final value (mean ± std over seeds) per arm;
    with ``window``, of each run's mean over its last ``window`` rounds."""
    lines = []
    for vname, arms in results.items():
        lines += [f"**{vname}**", "",
                  "| arm | " + " | ".join(columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for aname, runs in arms.items():
            cells = []
            for c in columns:
                v = np.array([run_value(r, c, window) for r in runs], float)
                cells.append(f"{v.mean():.{digits}f} ± {v.std():.{digits}f}" if len(v) > 1
                             else f"{v.mean():.{digits}f}")
            lines.append(f"| {aname} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_readme_section(marker: str, text: str, path: Path = README) -> None:
    """Replaces the text between ``<!-- marker:start -->`` and ``<!-- marker:end -->``."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    doc = path.read_text() if path.exists() else ""
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in doc and end in doc:
        doc = doc[:doc.index(start)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    path.write_text(doc)


FAIRNESS_COLUMNS = tuple(metrics.METRIC_NAMES)
