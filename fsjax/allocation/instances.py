"""The FairSynergy study's random systems, drawn exactly as its code draws them.

:func:`study_sweep` replays the feasibility sweep's ONE legacy numpy stream
(``np.random.seed(42)`` once, each draw ``rand(1)[0]``), the random baseline's
Dirichlet draws interleaved in the study's order (REFERENCE.md section A):

* one resource, per experiment: ``T, e_1 = draw/10, g_1``; then for
  ``n = 1..n_max``: if ``n > 1``, ``T += draw, e_n = draw/10, g_n``; then
  ``dirichlet(ones(n))`` for the random split of ``T``.
* two resources, per experiment: ``T`` (compute), ``E_bar`` (data),
  ``a0_1 = draw/100, r0_1 = draw/100, g2_1, g1_1``; then for ``n = 1..n_max``:
  if ``n > 1``, ``T += draw, E_bar += draw`` and ``a0_n, r0_n, g2_n, g1_n``;
  then one Dirichlet for data (times ``E_bar``) and one for compute (times ``T``).

The study's code also re-seeds numpy with 42 inside each two-resource
allocator call; that is a defect (it makes the experiments repeat) and is not
replayed. :func:`sweep_batch` turns one experiment into one padded, masked batch.
"""

from __future__ import annotations

import numpy as np

from fsjax.allocation.utilities import CobbDouglas, PowerLaw


def study_sweep(two_resources, n_experiments=20, n_max=100, seed=42):
    """The feasibility sweep's systems and random-baseline draws, in the study's stream order.

    Args:
        two_resources: False for the one-resource (power-law, file ``EEN_...``)
            variant, True for two resources (Cobb-Douglas, file ``DL_...``).
        n_experiments: experiments (each grows one system from 1 to ``n_max`` agents).
        n_max: largest system.
        seed: the seed set once before the first experiment.

    Returns:
        dict of float64 arrays. Per agent ``[e, n_max]`` (agent ``i`` joins at size
        ``i + 1``): one resource ``e_init, gamma``; two resources ``init1``
        (data ``r0``), ``init2`` (compute ``a0``), ``g1`` (data's exponent), ``g2``.
        Per size ``[e, n_max]`` (index ``n - 1``): ``budget`` (one resource) or
        ``budget1`` (data ``E_bar``) and ``budget2`` (compute ``T``). The random
        split's Dirichlet draws ``[e, n_max (size), n_max (agent)]``, zero past the
        size: ``dirichlet`` (one resource) or ``dirichlet1`` (data), ``dirichlet2``.

    Example:
        >>> inst = study_sweep(False, n_experiments=1, n_max=3)
        >>> inst["gamma"].shape, inst["dirichlet"][0, 1].round(3).tolist()
        ((1, 3), [0.686, 0.314, 0.0])
    """
    rs = np.random.RandomState(seed)  # the legacy global stream of np.random.seed(seed)

    def draw():
        return rs.rand(1)[0]

    E, N = n_experiments, n_max
    per_agent = ("init2", "init1", "g2", "g1") if two_resources else ("e_init", "gamma")
    divisor = {"init2": 100.0, "init1": 100.0, "e_init": 10.0}
    budgets = ("budget2", "budget1") if two_resources else ("budget",)  # the study's draw order: T, then E_bar
    dirichlets = ("dirichlet1", "dirichlet2") if two_resources else ("dirichlet",)
    out = {k: np.zeros((E, N)) for k in per_agent + budgets}
    out.update({k: np.zeros((E, N, N)) for k in dirichlets})
    for j in range(E):
        level = {b: draw() for b in budgets}
        for k in per_agent:
            out[k][j, 0] = draw() / divisor.get(k, 1.0)
        for i in range(N):
            if i > 0:
                for b in budgets:
                    level[b] += draw()
                for k in per_agent:
                    out[k][j, i] = draw() / divisor.get(k, 1.0)
            for b in budgets:
                out[b][j, i] = level[b]
            for d in dirichlets:  # data first, then compute (two resources)
                out[d][j, i, : i + 1] = rs.dirichlet(np.ones(i + 1), size=1)[0]
    return out


def sweep_batch(inst, e, sizes=None):
    """Experiment ``e`` of :func:`study_sweep` as one padded, masked batch.

    Args:
        inst: output of :func:`study_sweep` (one or two resources).
        e: experiment index.
        sizes: system sizes to include (default all, ``1..n_max``); system ``s``
            holds the experiment's first ``s`` agents and its budget at size ``s``.

    Returns:
        ``(utility with leaves f[len(sizes), n_max], budget f[len(sizes)] or
        f[len(sizes), 2] (data, compute), mask bool[len(sizes), n_max])``.

    Example:
        >>> u, b, m = sweep_batch(study_sweep(True, n_experiments=1, n_max=4), 0, sizes=[2, 4])
        >>> u.g1.shape, b.shape, m.sum(1).tolist()
        ((2, 4), (2, 2), [2, 4])
    """
    two = "g1" in inst
    n = inst["g1" if two else "gamma"].shape[1]
    sizes = np.arange(1, n + 1) if sizes is None else np.asarray(sizes)
    mask = np.arange(n)[None, :] < sizes[:, None]

    def rows(k):  # every system of the batch sees the experiment's agents, masked past its size
        return np.broadcast_to(inst[k][e], (len(sizes), n))

    ones = np.ones((len(sizes), n))
    if two:
        utility = CobbDouglas(rows("g1"), rows("g2"), rows("init1"), rows("init2"), ones)
        budget = np.stack([inst["budget1"][e], inst["budget2"][e]], -1)[sizes - 1]
    else:
        utility = PowerLaw(rows("gamma"), rows("e_init"), ones)
        budget = inst["budget"][e][sizes - 1]
    return utility, budget, mask


def random_split(inst, e):
    """The study's random baseline for experiment ``e``: its Dirichlet draws times the budgets.

    Args:
        inst: output of :func:`study_sweep`.
        e: experiment index.

    Returns:
        f[n_max (size), n_max (agent)] (one resource) or f[n_max, n_max, 2]
        (data, compute): the allocation of every system size, zero past the size.

    Example:
        >>> x = random_split(study_sweep(False, n_experiments=1, n_max=3), 0)
        >>> bool(np.allclose(x.sum(1), study_sweep(False, 1, 3)["budget"][0]))
        True
    """
    if "g1" in inst:
        return np.stack([inst["dirichlet1"][e] * inst["budget1"][e][:, None],
                         inst["dirichlet2"][e] * inst["budget2"][e][:, None]], -1)
    return inst["dirichlet"][e] * inst["budget"][e][:, None]
