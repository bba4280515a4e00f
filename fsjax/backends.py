"""Training backends: how a round's K client slots get trained.

:class:`fsjax.simulation.Simulation` takes one backend and never asks which
kind it is beyond two flags:

- ``on_host=False`` (``vmap``, ``chunked``): ``train`` is traced into the one
  compiled round. A backend with ``reduce`` (``chunked``) trains and sums the
  aggregation terms in one pass, so no K-stacked deltas are built.
- ``on_host=True`` (``loop``, and the networked server's remote clients):
  ``train`` runs in Python between the jitted first half of the round
  (availability, selection, plan) and the jitted second half (aggregation,
  evaluation, metrics).

A backend's ``train(state, plan, shards)`` gets the round state (``params``,
``round``), the :class:`~fsjax.simulation.RoundPlan` (slots, steps, keys) and
the gathered client shards, and returns ``(LocalResult with a leading K axis,
reported)`` where ``reported`` is a bool[K] (False: the update never arrived,
counted as failed) or None (every slot reported).

Example:
  >>> from fsjax import backends
  >>> b = backends.host("networked", lambda state, plan, shards: ...)
  >>> b.name, b.on_host, b.reduce is None
  ('networked', True, True)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from fsjax import engine


class Backend(NamedTuple):
    """One way of training the K slots of a round.

    Attributes:
      name: shown in the run description and the MLflow ``engine_mode`` tag.
      on_host: True when ``train`` runs outside jit (between the two jitted halves).
      train: ``train(state, plan, shards) -> (LocalResult[K], reported bool[K] | None)``.
      reduce: optional fused form for in-jit backends:
        ``reduce(params, plan, shards, weigh, client_terms) -> (sum_c_delta, sum_h,
        engine.SlotStats)`` (see :func:`fsjax.engine.train_and_reduce`).
      chunk_size: clients per chunk (chunked mode), else None.
    """

    name: str
    on_host: bool
    train: Callable[..., tuple[Any, Any]]
    reduce: Callable[..., Any] | None = None
    chunk_size: int | None = None


def local(mode: str, local_train: Callable, *, chunk_size: int | None = None,
          mesh=None) -> Backend:
    """The in-process backend for ``engine.mode`` (``vmap | chunked | loop | auto``).

    Args:
      mode: engine mode; ``auto`` resolves per backend (:func:`fsjax.engine.resolve_mode`).
      local_train: ``local_train(params, shard, steps, key) -> LocalResult`` for one client.
      chunk_size: clients per chunk in chunked mode.
      mesh: optional ``"clients"`` device mesh (vmap and chunked).

    Returns:
      A :class:`Backend` named after the resolved mode.
    """
    mode, chunk_size = engine.resolve_mode(mode, chunk_size)

    def train(state, plan, shards):
        return engine.train_clients(local_train, state.params, shards, plan.steps, plan.keys,
                                    mode=mode, chunk_size=chunk_size, mesh=mesh), None

    reduce = None
    if mode == "chunked":
        def reduce(params, plan, shards, weigh, client_terms):
            return engine.train_and_reduce(local_train, params, shards, plan.steps, plan.keys,
                                           weigh, client_terms, chunk_size=chunk_size,
                                           mesh=mesh)
    return Backend(mode, mode == "loop", train, reduce, chunk_size)


def host(name: str, train: Callable) -> Backend:
    """A backend whose ``train(state, plan, shards)`` runs on the host, outside jit.

    The networked server uses it with a function that pushes the round to the
    remote clients and collects their updates.
    """
    return Backend(name, True, train)
