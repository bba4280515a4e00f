"""Matplotlib figures of a run, saved as PNG files (and logged as run artifacts).

All functions take plain numpy data (a metric history, per-client arrays) and
write one figure; none needs MLflow, so they work on any saved history.

Example:
  >>> paths = save_run_figures(history.metrics, history.clients, "outputs/run/figures")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

FAIRNESS = ("accuracy_jain", "utility_cv", "utility_jain", "selection_gap",
            "conditional_selection_gap", "participation_gini", "worst10_utility",
            "accuracy_variance", "label_kl", "unseen_labels", "class_loss_variance")


def _plt():
    import matplotlib
    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not fig.legends:
        fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def _style(ax, title: str) -> None:
    from matplotlib.ticker import MaxNLocator
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("round", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _rounds(values) -> np.ndarray:
    return np.arange(1, len(values) + 1)


def plot_curves(metrics: Mapping[str, Sequence[float]], path, title: str = "") -> Path:
    """Accuracy (mean over clients, test) and every fairness metric over rounds."""
    plt = _plt()
    names = [n for n in ("accuracy_mean",) + FAIRNESS + ("train_loss",) if n in metrics]
    cols = 4
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        y = np.asarray(metrics[name], float)
        ax.plot(_rounds(y), y, lw=1.5)
        if name == "accuracy_mean" and "test_accuracy" in metrics:
            t = np.asarray(metrics["test_accuracy"], float)
            ok = np.isfinite(t)
            ax.plot(_rounds(t)[ok], t[ok], "o--", ms=3, label="test set")
            ax.legend(fontsize=7)
        _style(ax, name)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_participation(participation: Sequence[int], path) -> Path:
    """Histogram of how many rounds each client took part in."""
    plt = _plt()
    p = np.asarray(participation, int)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(p, bins=np.arange(p.max() + 2) - 0.5, color="tab:blue", alpha=0.8)
    ax.set_xlabel("rounds participated")
    ax.set_ylabel("clients")
    ax.set_title(f"participation ({(p == 0).sum()} of {len(p)} clients never took part)",
                 fontsize=9)
    return _save(fig, path)


def plot_client_bars(values: Sequence[float], path, ylabel: str) -> Path:
    """Per-client values sorted from lowest to highest (e.g. final accuracy).

    Bars up to a few thousand clients; beyond, one filled curve (a million bars
    would take minutes to draw and show nothing more).
    """
    plt = _plt()
    v = np.sort(np.asarray(values, float))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if len(v) <= 2000:
        ax.bar(np.arange(len(v)), v, width=1.0, color="tab:green")
    else:
        ax.fill_between(np.arange(len(v)), v, color="tab:green", step="post")
    ax.axhline(v.mean(), color="k", lw=1, ls="--", label=f"mean {v.mean():.3f}")
    ax.set_xlabel("client (sorted)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def plot_allocation(names: Sequence[str], allocations: Mapping[str, Sequence[float]],
                    prices: Sequence[float] | None, path) -> Path:
    """Allocation per agent for each method (grouped bars), and FairSynergy's prices."""
    plt = _plt()
    n = len(names)
    methods = list(allocations)
    panels = 2 if prices is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.4), squeeze=False)
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        axes[0, 0].bar(np.arange(n) + i * width, allocations[m], width, label=m)
    axes[0, 0].set_xticks(np.arange(n) + 0.4 - width / 2, names, rotation=45, fontsize=7)
    axes[0, 0].set_ylabel("allocation")
    axes[0, 0].legend(fontsize=7)
    if prices is not None:
        axes[0, 1].bar(np.arange(n), prices, color="tab:red")
        axes[0, 1].set_xticks(np.arange(n), names, rotation=45, fontsize=7)
        axes[0, 1].set_ylabel("price du/dx")
    return _save(fig, path)


def plot_overlay(histories: Mapping[str, Mapping[str, Sequence[float]]],
                 metric_names: Sequence[str], path, band: Mapping[str, Mapping] | None = None,
                 title: str = "") -> Path:
    """Overlays several runs' metric curves, one panel per metric.

    Args:
      histories: ``{label: {metric: values per round}}``.
      metric_names: metrics to draw.
      path: output PNG.
      band: optional ``{label: {metric: (low, high)}}`` shaded around a curve
        (e.g. the spread over seeds).
      title: figure title.
    """
    plt = _plt()
    cols = min(3, len(metric_names))
    rows = -(-len(metric_names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.9 * rows), squeeze=False)
    for ax, name in zip(axes.flat, metric_names):
        for label, hist in histories.items():
            if name not in hist:
                continue
            y = np.asarray(hist[name], float)
            (line,) = ax.plot(_rounds(y), y, lw=1.4, label=label)
            if band and label in band and name in band[label]:
                lo, hi = band[label][name]
                ax.fill_between(_rounds(y), lo, hi, color=line.get_color(), alpha=0.15)
        _style(ax, name)
    for ax in list(axes.flat)[len(metric_names):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.tight_layout()
        ncol = 1 if max(len(lb) for lb in labels) > 40 else min(len(labels), 4)
        # Below the panels; bbox_inches="tight" grows the canvas to fit it.
        fig.legend(handles, labels, loc="upper center", ncol=ncol, fontsize=8,
                   bbox_to_anchor=(0.5, 0.0))
    return _save(fig, path)


def save_run_figures(metrics: Mapping[str, Sequence[float]], clients: Mapping[str, Sequence],
                     out_dir: str | os.PathLike, title: str = "") -> list[Path]:
    """Writes the standard figures of one run into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    paths = [plot_curves(metrics, out / "curves.png", title)]
    if "participation" in clients:
        paths.append(plot_participation(clients["participation"], out / "participation.png"))
    if "accuracy" in clients:
        paths.append(plot_client_bars(clients["accuracy"], out / "client_accuracy.png",
                                      "final accuracy"))
    if "utility" in clients:
        paths.append(plot_client_bars(clients["utility"], out / "cumulative_utility.png",
                                      "cumulative utility u_k"))
    return paths
