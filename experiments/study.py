"""What the study drivers share: a grid of runs (an ``fsjax sweep``), summaries
over seeds, comparison figures and the markdown tables in ``experiments/README.md``.

A study is a list of *arms* (named override lists, e.g. one per selection
strategy) crossed with *variants* (e.g. availability models) and seeds, run by
:func:`fsjax.sweep.run_sweep` with the two as grid axes: each run is a normal
fsjax run directory under ``OUT/runs`` and one MLflow run (tagged with arm,
variant and seed) nested under the study's parent run; running a study again
with the same ``--out`` finishes only what is missing. With ``seed_major`` the
grid runs seed by seed (one sweep per seed), so a study stopped early holds
whole seeds; :func:`collect_grid` reads the runs finished so far.

Statistics over seeds (the CUP study's tables): :func:`mean_ci` (mean and 95%
Student-t half-width), :func:`paired_difference` (an arm minus a reference arm
seed by seed, distinguishable when the interval excludes 0), the markdown
tables :func:`ci_table` and :func:`paired_table`, and figures with a 95% CI
band per arm (:func:`ci_figures`, :func:`ci_panels`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from fsjax import metrics, plots, sweep

REPO = Path(__file__).resolve().parents[1]
README = REPO / "experiments" / "README.md"


def run_grid(base: str | Path, arms: dict[str, Sequence[str]],
             variants: dict[str, Sequence[str]], seeds: Sequence[int], *, out: Path,
             experiment: str, tracking_uri: str | None, extra: Sequence[str] = (),
             workers: int = 1, log=print, metrics: Sequence[str] | None = None,
             seed_major: bool = False) -> dict:
    """Runs every (variant, arm, seed) as an ``fsjax sweep``; returns ``results[variant][arm]``.

    The sweep (:func:`fsjax.sweep.run_sweep`) keeps each run's directory under
    ``out/runs``, nests the runs under one MLflow parent run (tagged with
    ``variant``, ``arm`` and ``seed``), skips runs a previous call finished and
    writes ``summary.csv``/``summary.md`` (mean ± 95% CI). Each entry of
    ``results[variant][arm]`` is a dict with ``seed``, ``seconds``, ``metrics``
    (per-round lists), ``final`` (last finite value of each metric, plus
    :func:`client_counts` from the run's ``clients.csv``) and ``config`` (the
    run's ``config.yaml`` as a dict).

    Args:
      metrics: the metrics of the sweep's own summary (default the sweep's).
      seed_major: run seed by seed (every arm of the first seed, then of the
        next, ...) instead of arm by arm, so a study stopped early holds whole
        seeds, each comparable across arms: one sweep per seed, in
        ``out/seed<N>`` (each with its own MLflow parent run; the sweep's
        summary over seeds is then this function's caller's job).
    """
    axes = [("variant", {k: list(v) for k, v in variants.items()}),
            ("arm", {k: list(v) for k, v in arms.items()})]
    seeds = list(seeds)
    sweeps = [(out / f"seed{s}", [s]) for s in seeds] if seed_major else [(out, seeds)]
    kwargs = {} if metrics is None else {"metrics": tuple(metrics)}
    for where, chunk in sweeps:
        sweep.run_sweep(base, axes, chunk, overrides=extra, out=where, workers=workers,
                        tracking_uri=None if tracking_uri == "none" else tracking_uri,
                        experiment=experiment, no_track=tracking_uri == "none", say=log,
                        **kwargs)
    results = collect_grid(out)
    (out / "results.json").write_text(json.dumps(results))
    return results


def collect_grid(out: str | Path) -> dict:
    """``results[variant][arm]`` (as :func:`run_grid` returns them) of the finished
    runs of the sweep in ``out``, or of the per-seed sweeps in ``out/seed<N>``:
    a study stopped early, or still running, gives what it has so far.

    Raises:
      ValueError: ``out`` holds no sweep.
    """
    out = Path(out)
    where = [out] if (out / sweep.SWEEP_FILE).is_file() else sorted(
        (d for d in out.glob("seed*") if (d / sweep.SWEEP_FILE).is_file()),
        key=lambda d: int(d.name[4:]) if d.name[4:].isdigit() else -1)
    if not where:
        raise ValueError(f"{out}: no {sweep.SWEEP_FILE} there or in {out}/seed*/ "
                         "(not a study's grid directory)")
    results: dict = {}
    for sweep_dir in where:
        for child, hist, done in sweep.load_children(sweep_dir)[1]:
            point = child["point"]
            final = {k: _last_finite(v) for k, v in hist.items()}
            final.update(client_counts(sweep_dir / child["dir"] / "clients.csv"))
            cfg_path = sweep_dir / child["dir"] / "config.yaml"
            cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else {}
            results.setdefault(point["variant"], {}).setdefault(point["arm"], []).append(
                dict(seed=child["seed"], seconds=done["seconds"], metrics=hist, final=final,
                     config=cfg))
    return results


def client_counts(path: str | Path) -> dict[str, float]:
    r"""Whole-run counts from a run's ``clients.csv``: ``ever_available`` (clients
    available in at least one round), ``ever_participated`` and ``num_clients``; ``{}`` without
    the file or the columns (``available_count``/``participated_count``, or the
    older ``available``/``participation``).

    Example:
      >>> import tempfile
      >>> p = Path(tempfile.mkdtemp()) / "clients.csv"
      >>> _ = p.write_text("client,available_count,participated_count\n0,3,1\n1,0,0\n2,2,0\n")
      >>> client_counts(p)
      {'ever_available': 2.0, 'ever_participated': 1.0, 'num_clients': 3.0}
    """
    import csv

    path = Path(path)
    if not path.is_file():
        return {}
    with path.open() as f:
        rows = list(csv.DictReader(f))
    out = {}
    for name, cols in (("ever_available", ("available_count", "available")),
                       ("ever_participated", ("participated_count", "participation"))):
        col = next((c for c in cols if rows and c in rows[0]), None)
        if col is not None:
            out[name] = float(sum(float(r[col]) > 0 for r in rows))
    if out:
        out["num_clients"] = float(len(rows))
    return out


def parser(description: str, out_name: str,
           seeds_help: str = "default 0 1 2 (0 with --quick)") -> argparse.ArgumentParser:
    """The options every study driver has; default output ``experiments/<out_name>[_quick]``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a few-minute version")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help=seeds_help)
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


# ---------------------------------------------- statistics over seeds (CUP study)
#
# ``arms`` below is one variant of a results dict: ``{arm: [run, ...]}``, a run
# being ``{"seed", "metrics", "final", ...}`` as :func:`run_grid` returns it.

LEVEL = 0.95


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The two-sided Student t quantile ``t_{(1+level)/2, df}`` (scipy, a jax dependency).

    Example:
      >>> round(t_quantile(4), 4)       # the 5-seed multiplier
      2.7764
    """
    from scipy import stats

    if df < 1:
        raise ValueError(f"t_quantile: df={df}, expected >= 1 (two or more seeds)")
    return float(stats.t.ppf(0.5 + level / 2, df))


def mean_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, int]:
    """``(mean, half-width of the t confidence interval, n)`` of the finite values.

    The half-width is ``t_{(1+level)/2, n-1} * s / sqrt(n)`` with the sample
    standard deviation ``s`` (ddof 1); NaN with fewer than two values.

    Example:
      >>> m, h, n = mean_ci([1.0, 2.0, 3.0, float("nan")])
      >>> m, round(h, 4), n              # 2 +- 4.3027 * 1 / sqrt(3)
      (2.0, 2.4841, 3)
    """
    x = np.asarray([v for v in values if not math.isnan(v)], float)
    if x.size == 0:
        return float("nan"), float("nan"), 0
    if x.size == 1:
        return float(x[0]), float("nan"), 1
    half = t_quantile(x.size - 1, level) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(half), int(x.size)


def seed_values(runs: Sequence[dict], metric: str, window: int = 0) -> dict[int, float]:
    """``{seed: value}`` of one arm's runs (:func:`run_value`; NaN where missing)."""
    out = {}
    for r in runs:
        has = metric in r["final"] or metric in r["metrics"]
        out[int(r["seed"])] = run_value(r, metric, window) if has else float("nan")
    return out


def paired_difference(runs: Sequence[dict], reference: Sequence[dict], metric: str,
                      window: int = 0, level: float = LEVEL) -> dict:
    """The arm minus the reference arm, seed by seed, with its t interval.

    Runs of the same seed share the trace start, the model initialisation and
    the data order, so the per-seed differences remove what the seed moves in
    both arms alike. Seeds present in only one arm, or NaN in either, are left
    out.

    Returns:
      ``{mean, half, low, high, n, distinguishable}``; ``distinguishable`` is
      True when the interval excludes 0 (needs n >= 2).

    Example:
      >>> a = [dict(seed=s, final={"m": v}, metrics={}) for s, v in [(0, 3.), (1, 5.), (2, 4.)]]
      >>> b = [dict(seed=s, final={"m": v}, metrics={}) for s, v in [(0, 1.), (1, 2.), (2, 2.)]]
      >>> d = paired_difference(a, b, "m")   # differences 2, 3, 2
      >>> round(d["mean"], 4), round(d["half"], 4), d["distinguishable"]
      (2.3333, 1.4342, True)
    """
    a, b = seed_values(runs, metric, window), seed_values(reference, metric, window)
    diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))
             if not (math.isnan(a[s]) or math.isnan(b[s]))]
    mean, half, n = mean_ci(diffs, level)
    low, high = mean - half, mean + half
    return dict(mean=mean, half=half, low=low, high=high, n=n,
                distinguishable=bool(n >= 2 and not math.isnan(half)
                                     and (low > 0 or high < 0)))


def _num(x: float, digits: int, sign: bool = False) -> str:
    if math.isnan(x):
        return "n/a"
    if abs(x) < 0.5 * 10 ** -digits:
        x = 0.0                     # no "-0.000" from rounding noise
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def ci_cell(mean: float, half: float, digits: int = 3, sign: bool = False) -> str:
    """``mean ± half`` (``mean`` alone when the half-width is NaN, ``n/a`` for NaN)."""
    if math.isnan(half) or math.isnan(mean):
        return _num(mean, digits, sign)
    return f"{_num(mean, digits, sign)} ± {half:.{digits}f}"


def ci_table(arms: dict, columns: Sequence[str], digits: int = 3, window: int = 0) -> str:
    """A markdown table, a row per arm: each column's mean ± 95% CI half-width over seeds.

    Args:
      arms: ``{arm: [run, ...]}``.
      columns: the metrics (final values; with ``window`` each run's mean over
        its last ``window`` rounds).
      digits: decimals.
    """
    lines = ["| arm | seeds | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for name, runs in arms.items():
        cells = []
        for c in columns:
            mean, half, _ = mean_ci(list(seed_values(runs, c, window).values()))
            cells.append(ci_cell(mean, half, digits))
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_table(arms: dict, columns: Sequence[str], reference: str, digits: int = 3,
                 window: int = 0) -> str:
    """A markdown table of each arm's paired difference from ``reference`` (mean ±
    95% CI half-width over seeds); a cell is **bold** when its interval excludes 0.

    Raises:
      ValueError: ``reference`` is not one of the arms.
    """
    if reference not in arms:
        raise ValueError(f"paired_table: reference arm {reference!r} not in {list(arms)}")
    lines = ["| arm − " + reference + " | pairs | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for name, runs in arms.items():
        if name == reference:
            continue
        cells, pairs = [], 0
        for c in columns:
            d = paired_difference(runs, arms[reference], c, window)
            pairs = max(pairs, d["n"])
            cell = ci_cell(d["mean"], d["half"], digits, sign=True)
            cells.append(f"**{cell}**" if d["distinguishable"] else cell)
        lines.append(f"| {name} | {pairs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def distinguishable(arms: dict, columns: Sequence[str], reference: str,
                    window: int = 0) -> dict[str, list[tuple[str, dict]]]:
    """``{metric: [(arm, paired difference), ...]}`` of the arms whose paired 95%
    interval against ``reference`` excludes 0 (metrics with none map to ``[]``)."""
    out: dict[str, list[tuple[str, dict]]] = {}
    for c in columns:
        out[c] = []
        for name, runs in arms.items():
            if name != reference:
                d = paired_difference(runs, arms[reference], c, window)
                if d["distinguishable"]:
                    out[c].append((name, d))
    return out


def ci_figures(arms: dict, metric_names: Sequence[str], out: Path, prefix: str,
               title: str = "") -> list[Path]:
    """One PNG per metric: per arm the mean curve over seeds and its 95% CI band
    (Student t over seeds, :func:`fsjax.summary.curve_band`); metrics no run
    logged are skipped."""
    from fsjax import summary

    paths = []
    for metric in metric_names:
        hist, band = {}, {}
        for name, runs in arms.items():
            mean, lo, hi = summary.curve_band([r["metrics"] for r in runs], metric)
            if mean.size:
                hist[name] = {metric: mean}
                band[name] = {metric: (lo, hi)}
        if hist:
            paths.append(plots.plot_overlay(
                hist, [metric], out / f"{prefix}{metric}.png", band=band,
                title=f"{title}{metric}: mean and 95% CI over seeds"))
    return paths


def ci_panels(arms: dict, metric_names: Sequence[str], path: Path, title: str = "") -> Path:
    """One PNG with a panel per metric: per arm the mean curve over seeds and its
    95% CI band (as :func:`ci_figures`, for the README)."""
    from fsjax import summary

    hist, band = {}, {}
    for name, runs in arms.items():
        for metric in metric_names:
            mean, lo, hi = summary.curve_band([r["metrics"] for r in runs], metric)
            if mean.size:
                hist.setdefault(name, {})[metric] = mean
                band.setdefault(name, {})[metric] = (lo, hi)
    return plots.plot_overlay(hist, list(metric_names), path, band=band,
                              title=f"{title}mean and 95% CI over seeds")
