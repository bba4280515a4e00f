"""The clients' data: the configured data set, partitioned, on the device.

Set-up that runs once before the first round: load the data set named by the
``data`` config (:func:`load_dataset`), split it between clients with the
partitioner named by ``partition.name`` (:func:`partition_clients`, through
:data:`fsjax.partition.REGISTRY`), and move the data set and the clients'
index lists to the device as :class:`FederatedData` (:func:`prepare`).

Example:
  >>> from fsjax import config, data
  >>> cfg = config.load(None, overrides=("partition.num_clients=4", "selection.clients_per_round=2"))
  >>> ds = data.synthetic(10, 200, 50, (4, 4, 1), seed=0)
  >>> fd = prepare(ds, cfg.partition, seed=0)
  >>> fd.x.shape[0], int(fd.n.sum() + fd.n_test.sum())
  (4, 200)
  >>> x, y, n = fd.gather(jnp.array([2, 0]))   # two clients' padded batches
  >>> x.shape[0], bool((n == fd.n[jnp.array([2, 0])]).all())
  (2, True)
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fsjax import data as data_lib, partition


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["x_all", "y_all", "index", "offsets", "n", "test_index", "test_offsets",
                 "n_test", "label_hist", "global_dist", "eval_set"],
    meta_fields=["width", "test_width", "population"])
@dataclasses.dataclass(frozen=True)
class FederatedData:
    """The clients' data on the device: one shared data set plus per-client index lists.

    A client is a list of row indices into ``x_all``/``y_all`` (and a list of
    held-out rows), stored flat with offsets (CSR): O(examples held), never
    padded. :meth:`gather` builds fixed-shape ``[k, width]`` batches of the
    clients asked for (inside ``jit``: the round gathers only its K slots). A
    ``sample`` population (``population`` set) stores no lists: a client's
    rows come from :func:`fsjax.partition.sample_rows`.

    ``width``/``test_width`` are static (the largest client's training/test
    rows), so gathered shapes never change and the round compiles once.
    ``eval_set`` is the global test set (:func:`global_test_set`) where the
    round evaluates on it (``eval.client_accuracy`` labels/label_set): an
    argument of the compiled round, not a constant folded into it.
    """

    x_all: jax.Array         # u8[N, H, W, ch]  the training set, shared by all clients
    y_all: jax.Array         # i32[N]
    index: jax.Array         # i32[T]  training rows of all clients, concatenated
    offsets: jax.Array       # i32[C]  start of each client's training rows in ``index``
    n: jax.Array             # i32[C]  training rows per client
    test_index: jax.Array    # i32[T'] held-out rows, concatenated
    test_offsets: jax.Array  # i32[C]
    n_test: jax.Array        # i32[C]
    label_hist: jax.Array    # f32[C, L] training label counts per client
    global_dist: jax.Array   # f32[L]    label distribution of all clients' training data
    eval_set: Any = None     # (x[1, M], y[1, M], n[1]) the global test set, or None
    width: int = 1           # static: rows of a gathered training batch (max of n)
    test_width: int = 1      # static: rows of a gathered test batch (max of n_test)
    population: Any = None   # static: partition.SampledClients, or None

    @property
    def num_clients(self) -> int:
        return self.n.shape[0]

    def rows(self, clients: jax.Array, test: bool = False):
        """(i32[k, width] data-set rows, bool[k, width] valid) of ``clients`` (i32[k])."""
        clients = jnp.asarray(clients, jnp.int32)
        if self.population is not None:
            drawn = partition.sample_rows(self.population, clients)
            rows = drawn[:, :self.test_width] if test else drawn[:, self.test_width:]
            return rows, jnp.ones(rows.shape, bool)
        if test:
            return partition.padded_rows(self.test_index, self.test_offsets, self.n_test,
                                         clients, self.test_width)
        return partition.padded_rows(self.index, self.offsets, self.n, clients, self.width)

    def gather(self, clients: jax.Array, test: bool = False):
        """``(x[k, width, ...], y[k, width], n[k])`` of ``clients``; padding rows are zeros.

        Pure and jittable; the same rows, in the same order, as the padded
        layout of :func:`fsjax.partition.to_padded`.
        """
        clients = jnp.asarray(clients, jnp.int32)
        rows, valid = self.rows(clients, test)
        extra = (1,) * (self.x_all.ndim - 1)
        x = jnp.where(valid.reshape(*valid.shape, *extra), self.x_all[rows], 0)
        x = x.astype(self.x_all.dtype)
        y = jnp.where(valid, self.y_all[rows], 0).astype(jnp.int32)
        return x, y, (self.n_test if test else self.n)[clients]

    # Padded views of every client, O(C x width): for small populations only
    # (the networked client, checks); the round never builds them.
    x = property(lambda self: self.gather(jnp.arange(self.num_clients))[0])
    y = property(lambda self: self.gather(jnp.arange(self.num_clients))[1])
    x_test = property(lambda self: self.gather(jnp.arange(self.num_clients), True)[0])
    y_test = property(lambda self: self.gather(jnp.arange(self.num_clients), True)[1])


def load_dataset(d: Any) -> tuple[data_lib.Dataset, str]:
    """The data set named by a ``data`` config and a one-line description of it.

    Args:
      d: the ``data`` section (:class:`fsjax.config.DataConfig`).

    Returns:
      ``(Dataset, description)``. With ``fallback="synthetic"`` a missing
      CIFAR-10 becomes generated data, with a warning.
    """
    synth = lambda: data_lib.synthetic(d.num_classes, d.n_train, d.n_test, d.image_shape,
                                       d.seed, d.noise)
    if d.source == "synthetic":
        return synth(), f"synthetic ({d.n_train} train, {d.num_classes} classes)"
    source = "auto" if d.source == "cifar10" else d.source
    try:
        ds = data_lib.load_cifar10(source, download=getattr(d, "download", "never"))
        return ds, f"CIFAR-10 from {source}"
    except ValueError:
        if d.fallback != "synthetic":
            raise
        # One line: what is used instead and how to get the real data.
        logging.getLogger("fsjax.data").warning(
            "CIFAR-10 not found; using GENERATED data instead (data.fallback=synthetic). "
            "To get CIFAR-10: %s", data_lib.HOW_TO_GET)
        return synth(), "synthetic fallback (CIFAR-10 not found)"


def partition_clients(labels: np.ndarray, p: Any, seed: int) -> partition.ClientShards:
    """Splits example indices between clients with ``partition.REGISTRY[p.name]``.

    The partitioner gets ``labels``, ``num_clients``, ``seed`` and every other
    of its parameters that the ``partition`` config has a field for (``alpha``,
    ``min_size``, ``labels_per_client``, ...).

    Args:
      labels: int[N] training labels.
      p: the ``partition`` section (:class:`fsjax.config.PartitionConfig`).
      seed: the partition seed.
    """
    factory = partition.REGISTRY[p.name]
    names = list(inspect.signature(factory).parameters)[1:]   # after labels
    kwargs = {k: getattr(p, k) for k in names if hasattr(p, k) and k != "seed"}
    return factory(labels, seed=seed, **kwargs)


def prepare(ds: data_lib.Dataset, p: Any, seed: int) -> FederatedData:
    """Partitions ``ds`` as ``p`` says and moves the data set and index lists to the device.

    Args:
      ds: the data set.
      p: the ``partition`` section (:class:`fsjax.config.PartitionConfig`).
      seed: the partition seed (``p.seed`` when set, else the experiment's).

    Returns:
      :class:`FederatedData`; raises ValueError when a client has no training
      example, or no test example while ``p.split_test > 0``. With
      ``split_test = 0`` (the CUP study: nothing held out) every client's test
      split is empty; evaluate clients from the global test set then
      (``eval.client_accuracy: labels | label_set``, :mod:`fsjax.evaluation`).
    """
    shards = partition_clients(ds.y_train, p, seed)
    x_all = jnp.asarray(ds.x_train)
    y_all = jnp.asarray(np.asarray(ds.y_train, np.int32))
    if isinstance(shards, partition.SampledClients):
        return _prepare_sampled(shards, x_all, y_all, p, ds.num_classes)
    train_idx, test_idx = partition.hold_out(shards, p.split_test, seed)
    train = partition.pack(train_idx)
    test = partition.truncate(partition.pack(test_idx), p.max_test_per_client)
    if (train.sizes == 0).any():
        raise ValueError("partition: some client has no training example; use fewer "
                         "clients or a smaller partition.split_test")
    if p.split_test > 0 and (test.sizes == 0).any():
        raise ValueError(f"partition.split_test={p.split_test}: some client has no test "
                         "example; use fewer clients or a larger partition.split_test")
    y_np = np.asarray(ds.y_train)
    hist = np.stack([np.bincount(y_np[i], minlength=ds.num_classes)
                     for i in train_idx]).astype(np.float32)
    return FederatedData(
        x_all, y_all, *(jnp.asarray(a) for a in (train.index, train.offsets, train.sizes,
                                                 test.index, test.offsets, test.sizes)),
        label_hist=jnp.asarray(hist), global_dist=jnp.asarray(hist.sum(0) / hist.sum()),
        width=max(1, int(train.sizes.max())), test_width=max(1, int(test.sizes.max())))


def _prepare_sampled(pop, x_all, y_all, p, num_classes: int) -> FederatedData:
    """A ``sample`` population: counts and label histograms from the clients' seeds."""
    m = partition.held_out_count(pop.examples_per_client, p.split_test)
    if p.max_test_per_client:
        m = min(m, p.max_test_per_client)
    width = pop.examples_per_client - m
    C = pop.num_clients
    empty = jnp.zeros(0, jnp.int32)
    fd = FederatedData(x_all, y_all, empty, empty, jnp.full(C, width, jnp.int32), empty,
                       empty, jnp.full(C, m, jnp.int32), jnp.zeros((C, 0)), jnp.zeros(0),
                       width=width, test_width=m, population=pop)

    @jax.jit
    def hist_of(clients, y_all):
        rows = partition.sample_rows(pop, clients)[:, m:]
        return jax.nn.one_hot(y_all[rows], num_classes, dtype=jnp.float32).sum(1)

    block = 4096
    ids = np.arange(-(-C // block) * block, dtype=np.int32).reshape(-1, block) % C
    hist = jnp.concatenate([hist_of(b, y_all) for b in ids])[:C]
    return dataclasses.replace(fd, label_hist=hist, global_dist=hist.sum(0) / hist.sum())


def global_test_set(ds: data_lib.Dataset, subset: int = 0):
    """The global test set as one evaluation "client": ``(x[1, M], y[1, M], n[1])``.

    Args:
      ds: the data set.
      subset: use a seeded random subset of this many examples (0 = all),
        whatever the order of the set.
    """
    x, y = ds.x_test, ds.y_test
    if subset:
        pick = np.sort(np.random.default_rng(0).permutation(len(y))[:subset])
        x, y = x[pick], y[pick]
    return jnp.asarray(x)[None], jnp.asarray(y)[None], jnp.asarray([len(y)], jnp.int32)
