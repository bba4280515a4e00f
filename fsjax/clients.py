"""The clients' data: the configured data set, partitioned, on the device.

Set-up that runs once before the first round: load the data set named by the
``data`` config (:func:`load_dataset`), split it between clients with the
partitioner named by ``partition.name`` (:func:`partition_clients`, through
:data:`fsjax.partition.REGISTRY`), and move the padded client arrays to the
device as :class:`FederatedData` (:func:`prepare`).

Example:
  >>> from fsjax import config, data
  >>> cfg = config.load(None, overrides=("partition.num_clients=4", "selection.clients_per_round=2"))
  >>> ds = data.synthetic(10, 200, 50, (4, 4, 1), seed=0)
  >>> fd = prepare(ds, cfg.partition, seed=0)
  >>> fd.x.shape[0], int(fd.n.sum() + fd.n_test.sum())
  (4, 200)
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fsjax import data as data_lib, partition


class FederatedData(NamedTuple):
    """Device-resident client data (leading axis C) and label statistics."""

    x: jax.Array            # u8[C, N_max, H, W, ch]
    y: jax.Array            # i32[C, N_max]
    n: jax.Array            # i32[C]
    x_test: jax.Array       # u8[C, M_max, H, W, ch]
    y_test: jax.Array       # i32[C, M_max]
    n_test: jax.Array       # i32[C]
    label_hist: jax.Array   # f32[C, L] training label counts per client
    global_dist: jax.Array  # f32[L]    label distribution of all clients' training data


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
        ds = data_lib.load_cifar10(source)
        return ds, f"CIFAR-10 from {source}"
    except ValueError as err:
        if d.fallback != "synthetic":
            raise
        warnings.warn(f"CIFAR-10 not found ({err}); using SYNTHETIC data instead "
                      "(data.fallback=synthetic)", stacklevel=2)
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
    """Partitions ``ds`` as ``p`` says and moves the padded client arrays to the device.

    Args:
      ds: the data set.
      p: the ``partition`` section (:class:`fsjax.config.PartitionConfig`).
      seed: the partition seed (``p.seed`` when set, else the experiment's).

    Returns:
      :class:`FederatedData`; raises ValueError when a client has no training
      or no test example.
    """
    shards = partition_clients(ds.y_train, p, seed)
    cd = partition.to_padded(ds, shards, p.split_test, seed)
    n_test, x_test, y_test = cd.n_test, cd.x_test, cd.y_test
    if p.max_test_per_client:
        n_test = np.minimum(n_test, p.max_test_per_client)
        x_test = x_test[:, :p.max_test_per_client]
        y_test = y_test[:, :p.max_test_per_client]
    if (n_test == 0).any() or (cd.n == 0).any():
        raise ValueError("partition: some client has no training or no test example; "
                         "use fewer clients or a larger partition.split_test")
    hist = np.stack([np.bincount(cd.y[c, :cd.n[c]], minlength=ds.num_classes)
                     for c in range(len(cd.n))]).astype(np.float32)
    return FederatedData(
        *(jnp.asarray(a) for a in (cd.x, cd.y, cd.n, x_test, y_test, n_test)),
        label_hist=jnp.asarray(hist),
        global_dist=jnp.asarray(hist.sum(0) / hist.sum()))


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
