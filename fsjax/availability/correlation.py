"""Correlated drop-outs: a base availability model whose linked clients fail together.

- :func:`correlation_groups` links clients whose availability series correlate
  above a threshold and returns each client's group (connected components).
- :func:`correlated` wraps a base model from ``REGISTRY`` and takes a whole
  group offline together (a shared outage, or one member's drop), with
  :class:`CorrelatedState`.

Example:
  >>> import jax.numpy as jnp
  >>> correlation_groups(jnp.array([[1, 1, 0], [0, 0, 1], [1, 1, 1], [0, 0, 0]]), 0.35).tolist()
  [0, 0, 2]
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fsjax.availability._checks import Array, check_num_clients, jitted, probabilities
from fsjax.availability.models import Availability

__all__ = ["CorrelatedState", "correlated", "correlation_groups"]



class CorrelatedState(NamedTuple):
    """State of :func:`correlated`.

    Attributes:
      base: the base model's state.
      group: i32[C]  # group id = smallest client index in the client's group
      grouped: bool[C]  # client is in a group of >= 2 correlated clients
    """

    base: Any
    group: Array
    grouped: Array


def correlation_groups(series: Array, threshold: float) -> Array:
    """Groups clients whose availability series correlate above ``threshold``.

    Two clients are linked when the Pearson correlation of their series is
    ``> threshold`` (a constant series correlates with nothing); groups are the
    connected components of that graph (single linkage), found by min-label
    propagation with pointer jumping. Costs O(C^2) memory: for very large C pass
    explicit ``groups`` to :func:`correlated`.

    Args:
      series: ``bool[W, C]`` or ``f32[W, C]`` availability over W rounds.
      threshold: correlation threshold in [-1, 1].

    Returns:
      ``i32[C]``: each client's group id, the smallest client index in its group.

    Example:
      >>> s = jnp.array([[1, 1, 0], [0, 0, 1], [1, 1, 1], [0, 0, 0]])
      >>> correlation_groups(s, 0.35).tolist()
      [0, 0, 2]
    """
    x = jnp.asarray(series, jnp.float32)
    z = x - x.mean(axis=0)
    norm = jnp.sqrt((z * z).sum(axis=0))
    z = jnp.where(norm > 0, z / jnp.where(norm > 0, norm, 1.0), 0.0)
    corr = z.T @ z
    c = x.shape[1]
    adj = (corr > threshold) | jnp.eye(c, dtype=bool)
    idx = jnp.arange(c, dtype=jnp.int32)

    def body(carry):
        labels, _ = carry
        nxt = jnp.min(jnp.where(adj, labels[None, :], c), axis=1)
        nxt = nxt[nxt]  # pointer jumping: converges in O(log diameter) more steps
        return nxt, jnp.any(nxt != labels)

    labels, _ = jax.lax.while_loop(lambda cl: cl[1], body, (idx, jnp.array(True)))
    return labels


def correlated(num_clients: int, base: str = "markov", base_params: dict | None = None,
               threshold: float = 0.35, *, p_group_drop: float = 0.1, mode: str = "shock",
               warmup: int = 200, groups: Sequence[int] | None = None) -> Availability:
    """A base model whose correlated clients drop out together.

    Groups: ``init`` runs the base model for ``warmup`` rounds (from an
    independent copy of its state) and links clients whose availability series
    correlate above ``threshold`` (:func:`correlation_groups`); or ``groups``
    gives each client's group label directly. Only groups of two or more clients
    are affected. How a group fails together (``mode``):

    - ``"shock"``: every round each group independently suffers an outage with
      probability ``p_group_drop`` that takes all its members offline, on top of
      the base availability.
    - ``"any"``: a grouped client is available only when every member of its
      group is available under the base model (one member's drop takes the
      whole group down).

    Independent base models (``bernoulli``, ``markov``) give practically no
    pairs above 0.35 (the sample correlation of independent series over 200
    rounds has standard deviation ~0.07), so the groups come from ``traces``
    (on the shipped traces, 60-minute slots, 0.35 links 28 of the 100 devices
    into 8 groups; clients sharing a device in lockstep, ``assign="round_robin"``
    with C > D, always group) or from explicit ``groups``.

    Args:
      num_clients: number of clients C.
      base: name of the base model in ``fsjax.availability.REGISTRY`` (not
        ``correlated``).
      base_params: its parameters (without ``num_clients``).
      threshold: correlation threshold in [-1, 1] (study: 0.35).
      p_group_drop: per-round outage probability of a group (``"shock"`` mode).
      mode: ``"shock"`` or ``"any"``.
      warmup: rounds of base history used to estimate correlations, >= 2.
      groups: optional list of C group labels (any hashable values); skips the
        correlation estimate.

    Returns:
      An :class:`Availability` with :class:`CorrelatedState`.

    Raises:
      ValueError: unknown ``base`` or ``mode``, threshold outside [-1, 1],
        probability outside [0, 1], ``warmup < 2``, ``groups`` of wrong length.

    Example:
      >>> m = correlated(num_clients=4, base="bernoulli", base_params={"p": 1.0},
      ...                groups=[0, 0, 1, 2], p_group_drop=1.0)
      >>> m.step(m.init(jax.random.key(0)), jax.random.key(1))[1].tolist()
      [False, False, True, True]
    """
    # The registry is the package's, read at call time: it lists this model
    # too, so importing it at module level would be circular.
    from fsjax.availability import REGISTRY

    c = check_num_clients(num_clients)
    if base not in REGISTRY or base == "correlated":
        raise ValueError(f"base={base!r}: expected one of "
                         f"{sorted(k for k in REGISTRY if k != 'correlated')}")
    try:
        thr = float(threshold)
    except (TypeError, ValueError):
        thr = float("nan")
    if not -1.0 <= thr <= 1.0:
        raise ValueError(f"threshold={threshold!r}: expected a correlation in [-1, 1]")
    p_shock = float(probabilities("p_group_drop", p_group_drop, 1)[0])
    if mode not in ("shock", "any"):
        raise ValueError(f"mode={mode!r}: expected 'shock' or 'any'")
    if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 2:
        raise ValueError(f"warmup={warmup!r}: expected an integer >= 2")
    model = REGISTRY[base](num_clients=c, **dict(base_params or {}))
    fixed = None
    if groups is not None:
        if len(groups) != c:
            raise ValueError(f"groups has {len(groups)} labels: expected num_clients={c}")
        first_index: dict = {}
        fixed = jnp.asarray([first_index.setdefault(g, i) for i, g in enumerate(groups)], jnp.int32)

    def init(key):
        k_base, k_hist = jax.random.split(key)
        state = model.init(k_base)
        if fixed is not None:
            group = fixed
        else:
            _, series = jax.lax.scan(model.step, model.init(k_base), jax.random.split(k_hist, warmup))
            group = correlation_groups(series, thr)
        size = jax.ops.segment_sum(jnp.ones((c,), jnp.int32), group, num_segments=c)
        return CorrelatedState(base=state, group=group, grouped=size[group] >= 2)

    def step(state, key):
        k_base, k_group = jax.random.split(key)
        base_state, available = model.step(state.base, k_base)
        if mode == "shock":
            # One draw per group id (ids are client indices), shared by its members.
            down = (jax.random.uniform(k_group, (c,)) < p_shock)[state.group]
        else:
            group_up = jax.ops.segment_min(available.astype(jnp.int32), state.group, num_segments=c)
            down = group_up[state.group] == 0
        available = available & ~(down & state.grouped)
        return state._replace(base=base_state), available

    return jitted(Availability, init, step)

