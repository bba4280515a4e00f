"""``fsjax allocate FILE``: FairSynergy and the baselines on agents read from a file.

The seven table scenarios of the study ship as examples in
``experiments/fairsynergy/scenarios/*.yaml``.

Schema (JSON or YAML; ``#`` comments allowed in YAML)::

    budget: 1.0          # required, >= 0; two resources: [B1, B2]
    alpha: 0             # optional fairness (0 utilitarian, 1 proportional), default 0
    seed: 0              # optional seed of the random baseline, default 0
    agents:              # required, a non-empty list
      - name: a          # optional, default "agent<i>"
        gamma: 0.25      # one resource: exponent in (0, 1]
        e_init: 0.007    # optional resource already held, >= 0, default 0
        scale: 1.0       # optional accuracy scale > 0, default 1
        weight: 1.0      # optional welfare weight > 0, default 1
        lower: 0.0       # optional bounds on the allocation (two resources:
        upper: null      #   the same bounds for each resource)
      - name: b          # two resources (Cobb-Douglas) instead use
        g1: 0.3          #   g1, g2 in [0, 1] and init1, init2 >= 0
        g2: 0.4          # (all agents of a file use the same kind)
        init1: 0.1
        init2: 0.05

Example:
    >>> print(report("experiments/fairsynergy/agents_example.yaml"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from fsjax import allocation

_ONE = {"gamma": None, "e_init": 0.0, "scale": 1.0}  # field -> default (None: required)
_TWO = {"g1": None, "g2": None, "init1": 0.0, "init2": 0.0, "scale": 1.0}
_COMMON = {"weight": 1.0, "lower": 0.0, "upper": math.inf}
_LIMITS = {  # field -> allowed range; any other field: a finite number >= 0
    "gamma": dict(lo=0.0, hi=1.0, lo_open=True),
    "g1": dict(lo=0.0, hi=1.0),
    "g2": dict(lo=0.0, hi=1.0),
    "scale": dict(lo=0.0, lo_open=True),
    "weight": dict(lo=0.0, lo_open=True),
    "upper": dict(lo=0.0, allow_inf=True),
}


class Agents(NamedTuple):
    """A validated agents file, ready for any allocator in ``allocation.REGISTRY``."""

    names: list  # str[n]
    utility: Any  # PowerLaw or CobbDouglas with leaves f[n]
    budget: Any  # float or [float, float]
    alpha: float
    seed: int
    weights: np.ndarray  # f[n]
    lower: np.ndarray  # f[n] (f[n, 2] for two resources)
    upper: np.ndarray  # f[n] (f[n, 2])


def _number(where, value, *, lo=-math.inf, hi=math.inf, lo_open=False, allow_inf=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = not math.isnan(value) and (allow_inf or math.isfinite(value))
        ok = ok and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        lo_b = "(" if lo_open else "["
        raise ValueError(f"{where}: expected a number in {lo_b}{lo}, {hi}]; got {value!r}")
    return value


def _read(path):
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"{path}: cannot read agents file ({err.strerror})") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON: {err}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None


def load_agents(path) -> Agents:
    """Read and validate an agents file (schema in the module docstring).

    Args:
        path: ``.json``, ``.yaml`` or ``.yml`` file.

    Returns:
        ``Agents``.

    Raises:
        ValueError: naming the file and the bad field (``agents[2].gamma``, ...).

    Example:
        >>> load_agents("experiments/fairsynergy/agents_example.yaml").names  # doctest: +SKIP
        ['hand-1', 'hand-2', 'rich', 'fast-learner']
    """
    doc = _read(path)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping with 'budget' and 'agents'; got {type(doc).__name__}")
    unknown = set(doc) - {"budget", "alpha", "seed", "agents"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level field(s) {sorted(unknown)}; expected budget, alpha, seed, agents")
    agents = doc.get("agents")
    if not isinstance(agents, list) or not agents:
        raise ValueError(f"{path}: agents: expected a non-empty list; got {agents!r}")
    two = isinstance(agents[0], dict) and "g1" in agents[0]
    fields = dict(_TWO if two else _ONE, **_COMMON)
    budget = doc.get("budget")
    if two:
        if not isinstance(budget, list) or len(budget) != 2:
            raise ValueError(f"{path}: budget: two-resource agents need [B1, B2]; got {budget!r}")
        budget = [_number(f"{path}: budget[{r}]", b, lo=0.0) for r, b in enumerate(budget)]
    else:
        budget = _number(f"{path}: budget", budget, lo=0.0)
    alpha = _number(f"{path}: alpha", doc.get("alpha", 0.0), lo=0.0)
    seed = doc.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"{path}: seed: expected a non-negative integer; got {seed!r}")

    names, cols = [], {k: [] for k in fields}
    for i, agent in enumerate(agents):
        where = f"{path}: agents[{i}]"
        if not isinstance(agent, dict):
            raise ValueError(f"{where}: expected a mapping of fields; got {agent!r}")
        extra = set(agent) - set(fields) - {"name"}
        if extra:
            kind = "two-resource (g1, g2, init1, init2)" if two else "one-resource (gamma, e_init)"
            raise ValueError(f"{where}: unknown field(s) {sorted(extra)} for {kind} agents")
        names.append(str(agent.get("name", f"agent{i}")))
        for k, default in fields.items():
            value = agent.get(k, default)
            if value is None and k == "upper":
                value = math.inf
            if value is None:
                raise ValueError(f"{where}.{k}: required field is missing")
            cols[k].append(_number(f"{where}.{k}", value, **_LIMITS.get(k, dict(lo=0.0))))
            if k == "upper" and cols["upper"][-1] < cols["lower"][-1]:
                raise ValueError(f"{where}.upper: {cols['upper'][-1]} is below lower {cols['lower'][-1]}")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: agents: names must be unique; got {names}")
    arr = {k: np.asarray(v) for k, v in cols.items()}
    lower, upper = arr["lower"], arr["upper"]
    if two:
        utility = allocation.CobbDouglas(arr["g1"], arr["g2"], arr["init1"], arr["init2"], arr["scale"])
        lower, upper = np.stack([lower, lower], -1), np.stack([upper, upper], -1)
        need = lower.sum(0)
        if np.any(need > np.asarray(budget)):
            raise ValueError(f"{path}: lower: sums to {need.tolist()}, above the budget {budget}")
    else:
        utility = allocation.PowerLaw(arr["gamma"], arr["e_init"], arr["scale"])
        if lower.sum() > budget:
            raise ValueError(f"{path}: lower: sums to {lower.sum()}, above the budget {budget}")
    return Agents(names, utility, budget, alpha, seed, arr["weight"], lower, upper)


def _methods(agents):
    """(label, Allocation) for FairSynergy (and the study pass) and each baseline."""
    kw = dict(alpha=agents.alpha, lower=agents.lower, upper=agents.upper, weights=agents.weights)
    budget = jnp.asarray(agents.budget)
    out = [("fairsynergy", allocation.solve(agents.utility, budget, **kw))]
    if isinstance(agents.utility, allocation.CobbDouglas):
        out.append(("study-pass", allocation.solve(agents.utility, budget, method="study", **kw)))
    key = jax.random.key(agents.seed)
    for name in ("uniform", "random", "equalizing"):
        out.append((name, allocation.REGISTRY[name](agents.utility, budget, key=key, **kw)))
    return out


def report(path, alpha=None, plot=None) -> str:
    """Plain-text table of allocation, utility and price per agent and method.

    Args:
        path: agents file (see the module docstring).
        alpha: fairness override; ``None`` keeps the file's ``alpha``.
        plot: optional PNG path for allocation bars per method and FairSynergy's
            prices (the first resource for two-resource files).

    Returns:
        The report; one block of rows per method, then a summary line each.

    Example:
        >>> print(report("experiments/fairsynergy/agents_example.yaml", alpha=1.0))  # doctest: +SKIP
    """
    agents = load_agents(path)
    if alpha is not None:
        agents = agents._replace(alpha=_number("alpha", alpha, lo=0.0))
    two = isinstance(agents.utility, allocation.CobbDouglas)
    # Float64 for the printed digits; scoped, so callers keep their own default.
    with jax.enable_x64(True):
        results = [(label, jax.tree_util.tree_map(np.asarray, out)) for label, out in _methods(agents)]
    width = max(8, *(len(n) for n in agents.names))
    cols = ("alloc_1", "alloc_2", "utility", "price_1", "price_2") if two else ("allocation", "utility", "price")
    budget = "[" + ", ".join(f"{b:g}" for b in agents.budget) + "]" if two else f"{agents.budget:g}"
    lines = [f"FairSynergy allocation for {path}",
             f"{len(agents.names)} agents, budget {budget}, alpha {agents.alpha:g}"
             + (" (two resources, Cobb-Douglas)" if two else " (power-law utilities)"), ""]
    header = f"{'method':<12} {'agent':<{width}} " + " ".join(f"{c:>11}" for c in cols)
    lines += [header, "-" * len(header)]
    for label, out in results:
        for i, name in enumerate(agents.names):
            x, p = np.atleast_1d(out.allocation[i]), np.atleast_1d(out.prices[i])
            vals = [*x, out.utilities[i], *p] if two else [x[0], out.utilities[i], p[0]]
            lines.append(f"{label:<12} {name:<{width}} " + " ".join(f"{v:>11.6f}" for v in vals))
    lines.append("")
    for label, out in results:
        note = ""
        if label in ("fairsynergy", "study-pass"):
            note = (f"  converged={bool(out.converged)} kkt_residual={float(out.residual):.1e} "
                    f"multiplier={np.array2string(np.asarray(out.multiplier), precision=6)}")
            if two:
                note += f" gap_to_joint={float(out.gap):.2e}"
        lines.append(f"{label:<12} objective={float(out.objective):.6f} "
                     f"mean_utility={float(np.mean(out.utilities)):.6f}{note}")
    if plot:
        from fsjax import plots
        first = (lambda a: np.asarray(a)[:, 0]) if two else np.asarray
        path_png = plots.plot_allocation(agents.names,
                                         {label: first(out.allocation) for label, out in results},
                                         first(results[0][1].prices), plot)
        lines.append(f"\nwrote {path_png}")
    return "\n".join(lines)


def main(path, alpha=None, plot=None) -> int:
    """Entry point for ``fsjax allocate FILE [--alpha A]``: print the report.

    Args:
        path: agents file.
        alpha: optional fairness override.
        plot: optional PNG path for the allocation and price bars.

    Returns:
        0 on success; 2 for a bad file (the message goes to stderr).

    Example:
        >>> main("experiments/fairsynergy/agents_example.yaml")  # doctest: +SKIP
        0
    """
    try:
        text = report(path, alpha=alpha, plot=plot)
    except ValueError as err:
        print(f"fsjax allocate: error: {err}", file=sys.stderr)
        return 2
    print(text)
    return 0
