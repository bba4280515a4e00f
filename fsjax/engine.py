"""Runs one client's local training over a leading client axis.

``local_train`` (from :mod:`fsjax.local`) is written for one client; this
module maps it over the K selected client slots in one of four modes:

- ``"vmap"``: ``jax.vmap`` over all K slots: one batched program. Wins on
  GPU, where many small kernels fuse into large ones.
- ``"chunked"``: ``lax.map`` over chunks of ``chunk_size`` slots, ``vmap``
  inside a chunk; bounds memory to one chunk. ``chunk_size=1`` is a compiled
  loop over clients, the fastest mode on XLA:CPU (see :func:`resolve_mode`).
- ``"loop"``: a plain Python loop over a jitted one-client function; the
  reference the other modes are tested against. Needs concrete inputs (it
  cannot run inside ``jax.jit``).
- ``"auto"``: ``chunked`` with ``chunk_size=1`` on CPU, ``vmap`` elsewhere.

With ``mesh`` (a :class:`jax.sharding.Mesh` with a ``"clients"`` axis) the
slots are split over the mesh's devices with ``jax.shard_map`` and each device
runs the chosen mode on its share; K must be a multiple of the device count
(:func:`pad_slots` rounds it up). Over several processes or hosts
(:mod:`fsjax.distributed`, ``fsjax run --distributed``) the mesh is built from
``jax.devices()`` after ``jax.distributed.initialize()``: the same code then
spans every process's devices, the ``psum`` included.

Example:
  >>> res = train_clients(local_train, params, shards, steps, keys, mode="vmap")  # doctest: +SKIP
  >>> res.delta  # params pytree with a leading K axis  # doctest: +SKIP
"""

from __future__ import annotations

import weakref
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from fsjax.aggregation import scaled_delta
from fsjax.local import LocalResult, Shard

MODES = ("vmap", "chunked", "loop", "auto")
CLIENT_AXIS = "clients"


def resolve_mode(mode: str, chunk_size: int | None = None,
                 backend: str | None = None) -> tuple[str, int | None]:
    """Resolves ``"auto"`` and the default chunk size.

    The rule comes from measurement (PERF-NOTES.md, bench/README.md): on
    XLA:CPU batching clients with ``vmap`` was slower than running them one
    after another inside one compiled ``lax.map`` (the CPU is already busy
    with one client's matrix products, and batched weights add copies), so
    ``auto`` is ``chunked`` with ``chunk_size=1`` there. On GPU/TPU ``vmap``
    fills the device, so ``auto`` is ``vmap``.

    Returns:
      ``(mode, chunk_size)`` with mode one of vmap/chunked/loop.
    """
    if mode not in MODES:
        raise ValueError(f"engine mode={mode!r}: expected one of {MODES}")
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"engine chunk_size={chunk_size}: expected a positive integer")
    backend = backend or jax.default_backend()
    if mode == "auto":
        return ("chunked", chunk_size or 1) if backend == "cpu" else ("vmap", None)
    if mode == "chunked":
        return mode, chunk_size or 1
    return mode, None


def client_mesh(devices=None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all) with the ``"clients"`` axis."""
    devices = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devices.reshape(-1), (CLIENT_AXIS,))


def pad_slots(num_slots: int, mesh: Mesh | None) -> int:
    """Rounds K up to a multiple of the mesh's device count."""
    if mesh is None:
        return num_slots
    d = mesh.shape[CLIENT_AXIS]
    return -(-num_slots // d) * d


def _map_clients(local_train: Callable, mode: str, chunk_size: int | None) -> Callable:
    """In-jit mapping of ``local_train`` over the leading axis of (shards, steps, keys)."""
    if mode == "vmap":
        return jax.vmap(local_train, in_axes=(None, 0, 0, 0))

    def chunked(params, shards, steps, keys):
        def one(args):
            return local_train(params, *args)
        batch = None if chunk_size in (None, 1) else chunk_size
        return jax.lax.map(one, (shards, steps, keys), batch_size=batch)

    return chunked


_JITTED: "weakref.WeakKeyDictionary[Callable, Callable]" = weakref.WeakKeyDictionary()


def _jit_one(local_train: Callable) -> Callable:
    """One jitted client function per ``local_train``, so loop mode compiles once."""
    if local_train not in _JITTED:
        _JITTED[local_train] = jax.jit(local_train)
    return _JITTED[local_train]


def train_clients(local_train: Callable, params, shards: Shard, steps: jax.Array,
                  keys: jax.Array, *, mode: str = "auto", chunk_size: int | None = None,
                  mesh: Mesh | None = None) -> LocalResult:
    """Trains K client slots from the same global ``params``.

    Args:
      local_train: ``local_train(params, shard, steps, key) -> LocalResult``.
      params: the global params (broadcast to every slot).
      shards: :class:`Shard` with a leading K axis (x: [K, N_max, ...]).
      steps: i32[K] local steps per slot (0 for padding slots).
      keys: [K] PRNG keys, one per slot.
      mode: ``"vmap" | "chunked" | "loop" | "auto"`` (see module doc).
      chunk_size: clients per chunk in ``"chunked"`` mode (default 1).
      mesh: optional device mesh with a ``"clients"`` axis.

    Returns:
      :class:`LocalResult` with a leading K axis.
    """
    mode, chunk_size = resolve_mode(mode, chunk_size)
    if mode == "loop":
        one = _jit_one(local_train)
        outs = [one(params, jax.tree.map(lambda a, k=k: a[k], shards), steps[k], keys[k])
                for k in range(steps.shape[0])]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
    fn = _map_clients(local_train, mode, chunk_size)
    if mesh is None or mesh.size == 1:
        return fn(params, shards, steps, keys)
    k = steps.shape[0]
    if k % mesh.shape[CLIENT_AXIS]:
        raise ValueError(f"{k} client slots do not split over {mesh.shape[CLIENT_AXIS]} "
                         "devices; round K up with engine.pad_slots")
    sharded = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(CLIENT_AXIS), P(CLIENT_AXIS),
                                                     P(CLIENT_AXIS)),
                            out_specs=P(CLIENT_AXIS), check_vma=False)
    return sharded(params, shards, steps, keys)


def finite_updates(result: LocalResult) -> jax.Array:
    """bool[K]: slots whose loss and every delta entry are finite."""
    return jax.vmap(finite_update)(result)


def finite_update(result: LocalResult) -> jax.Array:
    """bool[]: one client's loss and every delta entry are finite."""
    ok = jnp.isfinite(result.loss) & jnp.isfinite(result.loss0)
    for leaf in jax.tree.leaves(result.delta):
        ok &= jnp.isfinite(leaf).all()
    return ok


class SlotStats(NamedTuple):
    """Per-slot scalars of :func:`train_and_reduce` (a leading K axis)."""

    loss: jax.Array     # f32[K]
    loss0: jax.Array    # f32[K]
    steps: jax.Array    # i32[K]
    finite: jax.Array   # bool[K]
    weight: jax.Array   # f32[K]  what ``weigh`` gave the slot (0 = left out)


def train_and_reduce(local_train: Callable, params, shards: Shard, steps: jax.Array,
                     keys: jax.Array, weigh: Callable, client_terms: Callable, *,
                     chunk_size: int = 1, mesh: Mesh | None = None):
    """Trains K slots a chunk at a time and sums their aggregation terms on the fly.

    The memory-bounded form of :func:`train_clients` for aggregators that are a
    ratio of per-client sums (all of :mod:`fsjax.aggregation`): no K-stacked
    deltas are ever built, so memory is one model per chunk whatever K is. A
    ``lax.scan`` runs over chunks of ``chunk_size`` slots (``vmap`` inside a
    chunk); K is padded to a multiple of the chunk with weightless slots.

    Args:
      local_train: ``local_train(params, shard, steps, key) -> LocalResult``.
      params: the global params.
      shards, steps, keys: as :func:`train_clients` (leading K axis).
      weigh: ``weigh(slot, result) -> f32[]``: a slot's aggregation weight
        from its index in ``[0, K)`` and its (unstacked) LocalResult.
      client_terms: ``client_terms(delta, weight, loss0) -> (c, h)``
        (:attr:`fsjax.aggregation.Aggregator.client_terms`).
      chunk_size: slots trained together.
      mesh: optional ``"clients"`` mesh: each device reduces its share of the
        slots, then the sums are added across devices.

    Returns:
      ``(sum_c_delta, sum_h, SlotStats)``: the inputs of the aggregator's
      ``finish`` and per-slot scalars.
    """
    k = steps.shape[0]
    index = jnp.arange(k)

    def reduce(params, shards, steps, keys, index):
        n = steps.shape[0]
        c = max(1, min(chunk_size, n))
        pad = -n % c
        if pad:  # weightless copies of slot 0, trained for 0 steps
            grow = lambda a: jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)])
            shards, keys, steps = jax.tree.map(grow, shards), grow(keys), grow(steps)
            steps = steps.at[n:].set(0)
            index = jnp.concatenate([index, jnp.full(pad, -1, index.dtype)])

        def one(acc, slot):
            shard, st, key, i = slot
            res = local_train(params, shard, st, key)
            finite = finite_update(res)
            w = jnp.where(i >= 0, weigh(i, res), 0.0)
            c_k, h_k = client_terms(res.delta, w, res.loss0)
            acc = (jax.tree.map(jnp.add, acc[0], scaled_delta(res.delta, c_k)), acc[1] + h_k)
            return acc, SlotStats(res.loss, res.loss0, res.steps, finite, w)

        def chunk(acc, slots):
            if c == 1:
                return one(acc, jax.tree.map(lambda a: a[0], slots))
            results = jax.vmap(lambda s: one((zeros, 0.0), s))(slots)
            (sums, hs), stats = results
            acc = (jax.tree.map(lambda a, b: a + b.sum(0), acc[0], sums), acc[1] + hs.sum())
            return acc, stats

        zeros = jax.tree.map(jnp.zeros_like, params)
        split = lambda a: a.reshape(-1, c, *a.shape[1:])
        (sum_c_delta, sum_h), stats = jax.lax.scan(
            chunk, (zeros, jnp.float32(0.0)),
            jax.tree.map(split, (shards, steps, keys, index)))
        stats = jax.tree.map(lambda a: a.reshape(-1)[:n], stats)
        return sum_c_delta, sum_h, stats

    if mesh is None or mesh.size == 1:
        return reduce(params, shards, steps, keys, index)
    if k % mesh.shape[CLIENT_AXIS]:
        raise ValueError(f"{k} client slots do not split over {mesh.shape[CLIENT_AXIS]} "
                         "devices; round K up with engine.pad_slots")

    def per_device(params, shards, steps, keys, index):
        sums, hs, stats = reduce(params, shards, steps, keys, index)
        return jax.lax.psum(sums, CLIENT_AXIS), jax.lax.psum(hs, CLIENT_AXIS), stats

    slot = P(CLIENT_AXIS)
    return jax.shard_map(per_device, mesh=mesh, in_specs=(P(), slot, slot, slot, slot),
                         out_specs=(P(), P(), slot), check_vma=False)(
        params, shards, steps, keys, index)
