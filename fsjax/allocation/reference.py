"""Independent cvxpy references for the solvers (needs the ``dev`` extra: cvxpy).

* :func:`cvxpy_study` -- the study's one-resource path: a fresh problem per
  instance, one ``cp.power`` term per agent (Clarabel). Reference and benchmark
  baseline (bench/allocation.py).
* :func:`cvxpy_study_pass` -- the study's two-resource pass as two cvxpy
  problems: data with compute held at zero extra, then compute with that data.

cvxpy is imported inside each function, so importing this module costs nothing.
"""

from __future__ import annotations

import numpy as np


def _solve(problem, tol):
    opts = {} if tol is None else dict(tol_gap_abs=tol, tol_gap_rel=tol, tol_feas=tol)
    problem.solve(solver="CLARABEL", **opts)
    return problem.status


def cvxpy_study(gamma, e_init, budget, scale=None, approx=True, tol=None):
    """The study's cvxpy path: maximise ``sum scale_i (x_i + e_i) ** gamma_i`` (alpha 0).

    Args:
        gamma, e_init: f[n] exponents and initial resources.
        budget: the shared budget.
        scale: optional f[n] multipliers of each agent's curve (default 1).
        approx: cvxpy's rational SOC approximation of ``power`` (the study's
            default); False uses exact power cones.
        tol: optional Clarabel gap and feasibility tolerance.

    Returns:
        ``(allocation f[n], status str)``.
    """
    import cvxpy as cp

    n = len(gamma)
    scale = np.ones(n) if scale is None else scale
    x = cp.Variable(n, nonneg=True)
    terms = [scale[i] * cp.power(x[i] + e_init[i], gamma[i], approx=approx) for i in range(n)]
    problem = cp.Problem(cp.Maximize(cp.sum(cp.hstack(terms))), [cp.sum(x) <= budget])
    status = _solve(problem, tol)
    return np.asarray(x.value), status


def cvxpy_study_pass(g1, g2, init1, init2, budget, tol=1e-10):
    """The study's two-resource pass (alpha 0), each block one exact-cone cvxpy problem.

    Block 1 maximises ``sum (rho_i + init1_i) ** g1_i * init2_i ** g2_i`` over the
    data ``rho`` (compute at zero extra); block 2 maximises
    ``sum (rho_i + init1_i) ** g1_i * (a_i + init2_i) ** g2_i`` over compute ``a``.

    Args:
        g1, g2: f[n] data's and compute's exponents.
        init1, init2: f[n] initial data and compute.
        budget: ``(data budget, compute budget)``.
        tol: Clarabel tolerance.

    Returns:
        ``(allocation f[n, 2], (status_1, status_2))``.
    """
    rho, s1 = cvxpy_study(g1, init1, budget[0], scale=init2 ** g2, approx=False, tol=tol)
    rho = np.maximum(rho, 0.0)
    a, s2 = cvxpy_study(g2, init2, budget[1], scale=(rho + init1) ** g1, approx=False, tol=tol)
    return np.stack([rho, np.maximum(a, 0.0)], -1), (s1, s2)
