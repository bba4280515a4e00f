"""Summaries over seeds: mean ± 95% confidence interval (Student t) per grid point.

A sweep (:mod:`fsjax.sweep`) runs every grid point with several seeds; this
module reads the runs' per-round histories and reduces them, for each point
and metric, to the final value and the mean over the last ``N`` rounds, each
as the mean over seeds with the half-width of its 95% confidence interval
(``t_{0.975, n-1} * s / sqrt(n)``; NaN with one seed). It writes
``summary.csv`` (one row per point and metric), ``summary.md`` (one table,
``mean ± ci`` cells) and one figure per metric with the mean curve and its
CI band per point. :func:`load_children` and :func:`write_summary` read a
sweep directory (``sweep.json`` and the finished children's run
directories) and write its summary, also logged to the sweep's parent run.

Example:
  >>> mean, half = mean_ci([1.0, 2.0, 3.0])
  >>> round(mean, 6), round(half, 4)     # 2 + t(0.975, 2) * 1 / sqrt(3)
  (2.0, 2.4841)
  >>> mean_ci([4.0])[1] != mean_ci([4.0])[1]   # one seed: no interval (NaN)
  True
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from fsjax.files import atomic_write

LEVEL = 0.95
SWEEP_FILE = "sweep.json"      # a sweep directory's settings and children
DONE = "sweep_done.json"       # in a child's run directory once it finished


def mean_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Mean and CI half-width (Student t) of ``values``, NaNs dropped.

    Args:
      values: one value per seed.
      level: confidence level.

    Returns:
      ``(mean, half_width)``; the half-width is NaN with fewer than two values.
    """
    from scipy import stats   # a dependency of jax

    x = np.asarray([v for v in values if not math.isnan(v)], float)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float("nan")
    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(half)


def final_value(values: Sequence[float]) -> float:
    """The last finite value (sparse metrics such as ``test_accuracy`` skip rounds)."""
    finite = [float(v) for v in values if not math.isnan(v)]
    return finite[-1] if finite else float("nan")


def last_mean(values: Sequence[float], last: int) -> float:
    """The mean of the last ``last`` finite values."""
    finite = [float(v) for v in values if not math.isnan(v)]
    return float(np.mean(finite[-last:])) if finite else float("nan")


def summarize(points: Mapping[str, Sequence[Mapping[str, Sequence[float]]]],
              metrics: Sequence[str], last: int = 5) -> list[dict]:
    """One row per (point, metric) with ``n``, final and last-``last`` mean ± CI.

    Args:
      points: ``{point label: [history per seed]}``, a history being
        ``{metric: values per round}``.
      metrics: the metrics to summarise (missing ones are NaN).
      last: rounds in the "mean over the last N rounds" column.

    Returns:
      Rows ``{point, metric, n, final_mean, final_ci95, last_mean, last_ci95}``.
    """
    rows = []
    for label, hists in points.items():
        for m in metrics:
            finals = [final_value(h.get(m, [])) for h in hists]
            lasts = [last_mean(h.get(m, []), last) for h in hists]
            f_mean, f_ci = mean_ci(finals)
            l_mean, l_ci = mean_ci(lasts)
            rows.append(dict(point=label, metric=m, n=len(hists), final_mean=f_mean,
                             final_ci95=f_ci, last_mean=l_mean, last_ci95=l_ci))
    return rows


def _cell(mean: float, half: float, digits: int) -> str:
    if math.isnan(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def markdown(rows: Sequence[dict], last: int, digits: int = 4) -> str:
    """A table: a row per point, a final and a last-``last`` column per metric."""
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    points = list(dict.fromkeys(r["point"] for r in rows))
    by = {(r["point"], r["metric"]): r for r in rows}
    n = {p: by[(p, metrics[0])]["n"] for p in points} if metrics else {}
    head = ["grid point", "seeds"]
    for m in metrics:
        head += [f"{m} (final)", f"{m} (last {last})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        cells = [p, str(n[p])]
        for m in metrics:
            r = by[(p, m)]
            cells += [_cell(r["final_mean"], r["final_ci95"], digits),
                      _cell(r["last_mean"], r["last_ci95"], digits)]
        lines.append("| " + " | ".join(cells) + " |")
    return ("\n".join(lines) + f"\n\nMean over seeds ± half-width of the {LEVEL:.0%} "
            f"confidence interval (Student t); *last {last}*: each run's mean over its last "
            f"{last} rounds.\n")


def write(rows: Sequence[dict], out: str | Path, last: int) -> tuple[Path, Path]:
    """Writes ``summary.csv`` and ``summary.md`` into ``out``; returns their paths."""
    out = Path(out)
    buf = io.StringIO()
    fields = ["point", "metric", "n", "final_mean", "final_ci95", "last_mean", "last_ci95"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write(out / "summary.csv", buf.getvalue())
    atomic_write(out / "summary.md", markdown(rows, last))
    return out / "summary.csv", out / "summary.md"


def curve_band(hists: Sequence[Mapping[str, Sequence[float]]], metric: str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-round mean over seeds and its 95% CI band ``(mean, low, high)``.

    Runs of different lengths are cut to the shortest; NaN rounds stay NaN.
    """
    from scipy import stats

    rows = [np.asarray(h[metric], float) for h in hists if metric in h]
    if not rows:
        return np.array([]), np.array([]), np.array([])
    y = np.stack([r[:min(map(len, rows))] for r in rows])
    mean = y.mean(0)
    if len(y) < 2:
        return mean, mean, mean
    half = stats.t.ppf(0.5 + LEVEL / 2, len(y) - 1) * y.std(0, ddof=1) / math.sqrt(len(y))
    return mean, mean - half, mean + half


def figures(points: Mapping[str, Sequence[Mapping[str, Sequence[float]]]],
            metrics: Sequence[str], out: str | Path, title: str = "") -> list[Path]:
    """One PNG per metric: the mean curve and its 95% CI band for each grid point."""
    from fsjax import plots

    paths = []
    for m in metrics:
        hist, band = {}, {}
        for label, hists in points.items():
            mean, lo, hi = curve_band(hists, m)
            if mean.size:
                hist[label] = {m: mean}
                band[label] = {m: (lo, hi)}
        if hist:
            name = m.replace("/", "_")
            paths.append(plots.plot_overlay(
                hist, [m], Path(out) / f"sweep_{name}.png", band=band,
                title=f"{title}{m}: mean and 95% CI over seeds"))
    return paths


# ------------------------------------------------------------ sweep directories


def load_children(out: str | Path) -> tuple[dict, list[tuple[dict, dict, dict]]]:
    """A sweep directory's spec and ``(child, history, done info)`` per finished child.

    ``child`` is the child's entry in ``sweep.json`` (``name``, ``point``,
    ``seed``, ``overrides``, ``dir``); ``history`` its ``metrics_log.csv``.
    """
    from fsjax import tracking

    out = Path(out)
    if not (out / SWEEP_FILE).is_file():
        raise ValueError(f"--from {out}: no {SWEEP_FILE} there (not a sweep directory)")
    spec = json.loads((out / SWEEP_FILE).read_text())
    found = []
    for c in spec["children"]:
        run_dir = out / c["dir"]
        if (run_dir / DONE).is_file() and (run_dir / tracking.METRICS_LOG).is_file():
            found.append((c, tracking.read_metrics_csv(run_dir / tracking.METRICS_LOG),
                          json.loads((run_dir / DONE).read_text())))
    return spec, found


def write_summary(out: str | Path, *, metrics: Sequence[str] | None = None,
                  last: int | None = None, say: Callable[[str], None] = print,
                  status: str = "FINISHED", log_parent: bool = True) -> Path:
    """Writes ``summary.csv``, ``summary.md`` and the figures from the finished children.

    Also logs them (and each cell as a metric) to the parent run when the sweep
    was tracked. Returns the path of ``summary.md``.
    """
    from fsjax import sweep, tracking

    out = Path(out)
    spec, found = load_children(out)
    metrics = list(metrics or spec["metrics"])
    last = last or spec["last"]
    axes = [(a[0], a[1]) for a in spec["axes"]]
    points: dict[str, list[dict]] = {}
    known = set().union(*(hist for _, hist, _ in found))
    if found and (unknown := [m for m in metrics if m not in known]):
        say(f"summary: no metric {', '.join(map(repr, unknown))} in the runs; "
            f"expected some of {sorted(known)}")
        metrics = [m for m in metrics if m in known]
        if not metrics:
            raise ValueError(f"--metrics: none of the runs has {unknown}")
    for child, hist, _ in found:
        points.setdefault(sweep.summary_point_label(child["point"], axes), []).append(hist)
    rows = summarize(points, metrics, last)
    csv_path, md_path = write(rows, out, last)
    figs = figures(points, metrics, out / "figures")
    say(f"\nsummary of {len(found)}/{len(spec['children'])} children:\n\n"
        f"{md_path.read_text()}\nwrote {csv_path}, {md_path}, {len(figs)} figures in "
        f"{out / 'figures'}")
    if log_parent and spec.get("tracking_uri") and spec.get("parent_run_id"):
        cells = {}
        for r in rows:
            key = re.sub(r"[^A-Za-z0-9_./ -]", "_", f"summary/{r['point']}/{r['metric']}")
            cells[f"{key}/final_mean"] = r["final_mean"]
            cells[f"{key}/last{last}_mean"] = r["last_mean"]
        tracking.finish_parent_run(spec["tracking_uri"], spec["parent_run_id"], cells,
                                   [csv_path, md_path, *figs], status=status)
    return md_path
