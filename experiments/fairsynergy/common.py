"""What the FairSynergy experiments and ``bench.allocation`` share: paths, data, references.

* ``data_path``: ``--data`` > ``$FSJAX_SHARED/data/...`` > ``../shared/data/...``
  (relative to the repository root).
* ``sweep_instances``: the feasibility sweep's random systems (numpy seed 42).
* ``cvxpy_study``: the study's own solver path (cvxpy, one ``cp.power`` term per
  agent, a fresh problem per instance), the reference and the benchmark baseline.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CONFIGS = "fairsynergy-dl-configs.json"
DEFAULT_OUT = REPO / "experiments" / "fairsynergy" / "out"


def data_path(arg=None) -> Path:
    """The 86-config file: ``--data``, else ``$FSJAX_SHARED/data``, else ``../shared/data``."""
    if arg:
        path = Path(arg)
    elif os.environ.get("FSJAX_SHARED"):
        path = Path(os.environ["FSJAX_SHARED"]) / "data" / CONFIGS
    else:
        path = REPO.parent / "shared" / "data" / CONFIGS
    if not path.is_file():
        raise SystemExit(f"data file not found: {path} (pass --data FILE or set FSJAX_SHARED to the shared dir)")
    return path


def parser(description, data=False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output directory for CSV and PNG (default: %(default)s)")
    if data:
        p.add_argument("--data", default=None,
                       help=f"path to {CONFIGS} (default: $FSJAX_SHARED/data or ../shared/data)")
    return p


def out_dir(arg) -> Path:
    path = Path(arg)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def sweep_instances(two_resources, n_experiments=20, n_max=100, seed=42):
    """The feasibility sweep's systems, drawn in a fixed order from ``RandomState(seed)``.

    Per experiment and agent (agent ``i`` joins at size ``i + 1``): one resource draws
    ``[budget increment, initial resource * 10, gamma]``; two resources draw
    ``[increment rho, increment compute, rho0 * 100, compute0 * 100, g1, g2]``,
    all ``U(0, 1)``, as one ``(n_max, k)`` block per experiment.

    Returns:
        dict of arrays ``[n_experiments, n_max]``; the budget of size ``n`` is the
        cumulative sum of the first ``n`` increments.
    """
    rng = np.random.RandomState(seed)
    keys = ("inc1", "inc2", "init1", "init2", "g1", "g2") if two_resources else ("inc", "e_init", "gamma")
    draws = np.stack([rng.uniform(size=(n_max, len(keys))) for _ in range(n_experiments)])
    out = {k: draws[..., j] for j, k in enumerate(keys)}
    if two_resources:
        out["init1"], out["init2"] = out["init1"] / 100, out["init2"] / 100
    else:
        out["e_init"] = out["e_init"] / 10
    return out


def sweep_batch(inst, e, sizes=None):
    """Experiment ``e`` of ``sweep_instances`` as one padded, masked batch.

    Args:
        inst: output of ``sweep_instances`` (one or two resources).
        e: experiment index.
        sizes: system sizes to include (default all, 1..n_max); system ``s`` holds
            the first ``s`` agents and the sum of their budget increments.

    Returns:
        ``(utility with leaves [len(sizes), n_max], budget, mask bool[len(sizes), n_max])``.
    """
    from fsjax import allocation

    two = "g1" in inst
    n = inst["g1" if two else "gamma"].shape[1]
    sizes = np.arange(1, n + 1) if sizes is None else np.asarray(sizes)
    mask = np.arange(n)[None, :] < sizes[:, None]
    def rows(k):  # every system of the batch sees the experiment's agents, masked past its size
        return np.broadcast_to(inst[k][e], (len(sizes), n))

    ones = np.ones((len(sizes), n))
    if two:
        utility = allocation.CobbDouglas(rows("g1"), rows("g2"), rows("init1"), rows("init2"), ones)
        budget = np.stack([np.cumsum(inst["inc1"][e]), np.cumsum(inst["inc2"][e])], -1)[sizes - 1]
    else:
        utility = allocation.PowerLaw(rows("gamma"), rows("e_init"), ones)
        budget = np.cumsum(inst["inc"][e])[sizes - 1]
    return utility, budget, mask


def cvxpy_study(gamma, e_init, budget, scale=None, approx=True, tol=None):
    """The study's cvxpy path: maximise ``sum scale_i (x_i + e_i) ** gamma_i`` (alpha 0).

    One ``cp.power`` atom per agent and a fresh problem per call, as in the study;
    ``approx=False`` swaps cvxpy's rational SOC approximation of the power for an
    exact power cone; ``tol`` tightens Clarabel's gap and feasibility tolerances.

    Returns:
        (allocation f[n], status str).
    """
    import cvxpy as cp

    n = len(gamma)
    scale = np.ones(n) if scale is None else scale
    x = cp.Variable(n, nonneg=True)
    terms = [scale[i] * cp.power(x[i] + e_init[i], gamma[i], approx=approx) for i in range(n)]
    problem = cp.Problem(cp.Maximize(cp.sum(cp.hstack(terms))), [cp.sum(x) <= budget])
    opts = {} if tol is None else dict(tol_gap_abs=tol, tol_gap_rel=tol, tol_feas=tol)
    problem.solve(solver="CLARABEL", **opts)
    return np.asarray(x.value), problem.status
