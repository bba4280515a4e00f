"""Split a data set's training examples between clients.

Each partitioner returns :class:`ClientShards`, one int array of training
indices per client. :func:`hold_out` splits each shard into the client's
training and test index lists and :func:`pack` stores index lists flat with
offsets (:class:`ClientIndex`, CSR-style: O(examples held), never padded); the
engine gathers only the selected clients' rows into fixed-shape batches
(:class:`fsjax.clients.FederatedData`). :func:`to_padded` builds the old
padded layout ``x: [C, N_max, H, W, ch]`` (small populations, checks).

``label_ring`` (the CUP study's) gives client ``i`` the labels ``(i + o)
mod L`` and a seeded sample of their rows; its clients may share rows.

``sample`` is different: it stores nothing per client. Client ``c`` draws its
examples with replacement from the data set with the key
``fold_in(PRNGKey(seed), c)`` (:func:`sample_rows`), so a population of 10^6
clients needs O(C) integers and a client's rows are generated when it is
selected.

Example:
  >>> from fsjax import data, partition
  >>> ds = data.synthetic(10, 1000, 100, (8, 8, 3))
  >>> shards = partition.label_subsets(ds.y_train, 20, labels_per_client=2, seed=0)
  >>> partition.label_histogram(shards, ds.y_train, 10).shape
  (20, 10)
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ClientShards:
    """Training indices of each client.

    Attributes:
      indices: one int64 array of training-set indices per client; a training
        index belongs to at most one client, except in :func:`label_ring`
        (overlapping label sets; clients may share rows).
    """

    indices: list[np.ndarray]

    @property
    def num_clients(self) -> int:
        return len(self.indices)

    @property
    def sizes(self) -> np.ndarray:
        """int64[C]: examples per client."""
        return np.array([len(i) for i in self.indices], np.int64)


class ClientData(NamedTuple):
    """Padded per-client arrays, the engine's layout. Rows past ``n[c]`` are padding.

    idx/idx_test map rows back to training-set indices (-1 on padding) so a
    partition can be checked end to end.
    """

    x: np.ndarray         # u8[C, N_max, H, W, ch]  client training examples
    y: np.ndarray         # i32[C, N_max]
    n: np.ndarray         # i32[C]                  valid training rows
    x_test: np.ndarray    # u8[C, M_max, H, W, ch]  client test split
    y_test: np.ndarray    # i32[C, M_max]
    n_test: np.ndarray    # i32[C]                  valid test rows
    idx: np.ndarray       # i64[C, N_max]           training-set index of each row, -1 = pad
    idx_test: np.ndarray  # i64[C, M_max]


def _check_clients(labels: np.ndarray, num_clients: int) -> None:
    if int(num_clients) < 1:
        raise ValueError(f"num_clients={num_clients}: expected at least 1")
    if num_clients > len(labels):
        raise ValueError(
            f"num_clients={num_clients}: more clients than examples ({len(labels)}); "
            "expected num_clients <= number of training examples")


def iid(labels: np.ndarray, num_clients: int, seed: int = 0) -> ClientShards:
    """Shuffles the examples and deals them into ``num_clients`` near-equal shards.

    Every index goes to exactly one client.
    """
    labels = np.asarray(labels)
    _check_clients(labels, num_clients)
    perm = np.random.default_rng(seed).permutation(len(labels))
    return ClientShards([np.sort(s) for s in np.array_split(perm, num_clients)])


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, seed: int = 0,
              min_size: int = 10, max_tries: int = 100) -> ClientShards:
    """Label-skewed split: client shares of each class ~ Dirichlet(alpha).

    For each class, its examples are split between clients in proportions drawn
    from ``Dirichlet(alpha * 1_C)`` (Hsu et al. 2019). Smaller ``alpha`` gives
    more heterogeneous clients. Draws are repeated until every client holds at
    least ``min_size`` examples. Every index goes to exactly one client.

    Args:
      labels: int[N] training labels.
      num_clients: number of clients C.
      alpha: concentration, > 0.
      seed: seed of the generator.
      min_size: smallest acceptable shard.
      max_tries: redraws before giving up.
    """
    labels = np.asarray(labels)
    _check_clients(labels, num_clients)
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha={alpha}: expected a positive Dirichlet concentration")
    if min_size * num_clients > len(labels):
        raise ValueError(
            f"min_size={min_size}: {num_clients} clients x {min_size} exceeds the "
            f"{len(labels)} examples; lower min_size or num_clients")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
            for client, piece in enumerate(np.split(idx, cuts)):
                parts[client].append(piece)
        shards = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(s) for s in shards) >= min_size:
            return ClientShards(shards)
    raise ValueError(
        f"dirichlet(alpha={alpha}, num_clients={num_clients}): no draw in {max_tries} tries "
        f"gave every client at least min_size={min_size} examples; raise alpha or lower min_size")


def label_subsets(labels: np.ndarray, num_clients: int, labels_per_client: int,
                  seed: int = 0) -> ClientShards:
    """The CPP study's split: each client holds examples of exactly ``k`` labels.

    Clients pick their k labels in turn, each taking the k labels held by the
    fewest clients so far (ties broken at random), so label sets vary between
    clients while every label is held by ``floor`` or ``ceil`` of ``C * k / L``
    clients. Each label's examples are then shuffled and split evenly among the
    clients holding it. Every index goes to at most one client (all of them
    when every label is used).

    Args:
      labels: int[N] training labels.
      num_clients: number of clients C.
      labels_per_client: k, in ``[1, number of labels]``.
      seed: seed of the generator.
    """
    labels = np.asarray(labels)
    _check_clients(labels, num_clients)
    classes = np.unique(labels)
    k = int(labels_per_client)
    if not 1 <= k <= len(classes):
        raise ValueError(
            f"labels_per_client={labels_per_client}: expected an integer in [1, {len(classes)}] "
            "(the number of labels)")
    rng = np.random.default_rng(seed)
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    held = np.zeros(len(classes))
    for client in range(num_clients):
        # Least-held first; the random fraction only breaks ties.
        pick = np.argsort(held + rng.random(len(classes)), kind="stable")[:k]
        held[pick] += 1
        for j in pick:
            holders[int(classes[j])].append(client)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c, clients in holders.items():
        if not clients:
            continue
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < len(clients):
            raise ValueError(
                f"label_subsets: label {c} has {len(idx)} examples for {len(clients)} clients; "
                "lower num_clients or labels_per_client")
        for client, piece in zip(clients, np.array_split(idx, len(clients))):
            parts[client].append(piece)
    return ClientShards([np.sort(np.concatenate(p)) for p in parts])


def label_ring(labels: np.ndarray, num_clients: int, labels_per_client: int = 2,
               examples_per_client: int = 100, seed: int = 0) -> ClientShards:
    """The CUP study's split: client ``i`` holds the labels ``(i + o) mod L``, ``o < k``.

    Client ``i`` takes every training row whose label is one of its ``k``
    labels (``L`` = number of label values, ``max(labels) + 1``), shuffles
    them with its own generator ``default_rng([seed, i])`` and keeps the first
    ``examples_per_client`` (all of them when 0 or when there are fewer). The
    ring overlaps, so neighbouring clients share labels and may share rows;
    a client's rows depend only on ``(seed, i)`` and the labels, not on
    ``num_clients``. (The study shuffles with Python's ``random.Random(i)``
    whatever the run seed, over torchvision's row order; fsjax's CIFAR-10
    order differs, so the exact rows cannot match anyway.)

    Args:
      labels: int[N] training labels in ``[0, L)``.
      num_clients: number of clients C.
      labels_per_client: k, in ``[1, L]``.
      examples_per_client: rows kept per client (the study: 100); 0 = all.
      seed: seed of the per-client shuffles (non-negative).

    Returns:
      :class:`ClientShards` with sorted index arrays.

    Example:
      >>> y = np.repeat(np.arange(4), 5)                  # 4 labels x 5 rows
      >>> every = label_ring(y, 5, labels_per_client=2, examples_per_client=0)
      >>> [sorted(set(y[i].tolist())) for i in every.indices]
      [[0, 1], [1, 2], [2, 3], [0, 3], [0, 1]]
      >>> label_ring(y, 5, labels_per_client=2, examples_per_client=3).sizes.tolist()
      [3, 3, 3, 3, 3]
    """
    labels = np.asarray(labels)
    if int(num_clients) < 1:
        raise ValueError(f"num_clients={num_clients}: expected at least 1")
    if labels.size == 0 or labels.min() < 0:
        raise ValueError("label_ring: expected a non-empty array of labels >= 0")
    num_labels = int(labels.max()) + 1
    k = int(labels_per_client)
    if not 1 <= k <= num_labels:
        raise ValueError(f"labels_per_client={labels_per_client}: expected an integer in "
                         f"[1, {num_labels}] (the number of labels)")
    if int(examples_per_client) < 0:
        raise ValueError(f"examples_per_client={examples_per_client}: expected >= 0 "
                         "(0 = every row of the client's labels)")
    if int(seed) < 0:
        raise ValueError(f"seed={seed}: expected a non-negative seed")
    by_label = [np.flatnonzero(labels == lab) for lab in range(num_labels)]
    shards = []
    for i in range(int(num_clients)):
        held = sorted({(i + o) % num_labels for o in range(k)})
        # In data-set order (as the study lists them) before the shuffle.
        rows = np.sort(np.concatenate([by_label[lab] for lab in held]))
        if len(rows) == 0:
            raise ValueError(f"label_ring: client {i} holds labels {held}, which have no "
                             "training example")
        rows = np.random.default_rng([int(seed), i]).permutation(rows)
        keep = int(examples_per_client) or len(rows)
        shards.append(np.sort(rows[:keep]).astype(np.int64))
    return ClientShards(shards)


@dataclasses.dataclass(frozen=True)
class SampledClients:
    """A ``sample`` population: nothing stored per client (rows come from :func:`sample_rows`).

    Attributes:
      num_clients: C.
      examples_per_client: E, rows each client draws (its test rows included).
      seed: the population seed; client c uses ``fold_in(PRNGKey(seed), c)``.
      num_examples: N, size of the data set drawn from.
    """

    num_clients: int
    examples_per_client: int
    seed: int
    num_examples: int


def sample(labels: np.ndarray, num_clients: int, examples_per_client: int = 50,
           seed: int = 0) -> SampledClients:
    """A population of ``num_clients`` clients drawing examples with replacement.

    Each client draws ``examples_per_client`` training-set indices uniformly
    with replacement from its own key (deterministic per seed and per client,
    independent of C); see :func:`sample_rows`.

    Example:
      >>> pop = sample(np.zeros(100, int), 10**6, examples_per_client=50, seed=0)
      >>> rows = sample_rows(pop, jnp.arange(3))
      >>> rows.shape, bool((rows == sample_rows(pop, jnp.arange(3))).all())
      ((3, 50), True)
    """
    labels = np.asarray(labels)
    if int(num_clients) < 1:
        raise ValueError(f"num_clients={num_clients}: expected at least 1")
    if int(examples_per_client) < 2:
        raise ValueError(f"examples_per_client={examples_per_client}: expected at least 2 "
                         "(a client needs a training and a test example)")
    if len(labels) < 1:
        raise ValueError("sample: the data set has no training example")
    return SampledClients(int(num_clients), int(examples_per_client), int(seed), len(labels))


def sample_rows(pop: SampledClients, clients: jax.Array) -> jax.Array:
    """i32[k, E]: training-set rows of ``clients`` (i32[k]) in a ``sample`` population.

    Pure and jittable: generated from ``fold_in(PRNGKey(pop.seed), client)``.
    """
    key = jax.random.PRNGKey(pop.seed)
    one = lambda c: jax.random.randint(jax.random.fold_in(key, c), (pop.examples_per_client,),
                                       0, pop.num_examples, jnp.int32)
    return jax.vmap(one)(jnp.asarray(clients, jnp.int32))


REGISTRY = {"iid": iid, "dirichlet": dirichlet, "label_subsets": label_subsets,
            "label_ring": label_ring, "sample": sample}


class ClientIndex(NamedTuple):
    """Index lists of C clients stored flat (CSR): client c holds
    ``index[offsets[c] : offsets[c] + sizes[c]]``."""

    index: np.ndarray    # i32[T]  training-set indices, all clients concatenated
    offsets: np.ndarray  # i32[C]  start of each client's list in ``index``
    sizes: np.ndarray    # i32[C]  length of each client's list


def pack(index_lists) -> ClientIndex:
    """Stores index lists flat with offsets (O(total length), no padding).

    Example:
      >>> ci = pack([np.array([4, 7]), np.array([1]), np.array([0, 2, 3])])
      >>> ci.index.tolist(), ci.offsets.tolist(), ci.sizes.tolist()
      ([4, 7, 1, 0, 2, 3], [0, 2, 3], [2, 1, 3])
    """
    sizes = np.array([len(i) for i in index_lists], np.int64)
    if sizes.sum() >= 2**31:
        raise ValueError(f"pack: {sizes.sum()} indices do not fit int32 offsets")
    index = (np.concatenate([np.asarray(i, np.int64) for i in index_lists])
             if len(index_lists) else np.zeros(0, np.int64)).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
    return ClientIndex(index, offsets, sizes.astype(np.int32))


def truncate(ci: ClientIndex, cap: int) -> ClientIndex:
    """Keeps the first ``cap`` indices of every client (``cap`` 0 = all)."""
    if not cap:
        return ci
    return ClientIndex(ci.index, ci.offsets, np.minimum(ci.sizes, cap).astype(np.int32))


def padded_rows(ci_index, offsets, sizes, clients, width: int):
    """(i32[k, width] rows, bool[k, width] valid) of ``clients``; jittable.

    Row ``j`` of a client is its ``j``-th index for ``j < size``; padding
    positions repeat a valid index (or 0) and are marked invalid.
    """
    j = jnp.arange(width)[None, :]
    n = sizes[clients][:, None]
    valid = j < n
    if ci_index.shape[0] == 0:
        return jnp.zeros((clients.shape[0], width), jnp.int32), valid
    pos = offsets[clients][:, None] + jnp.clip(jnp.minimum(j, n - 1), 0)
    return ci_index[jnp.clip(pos, 0, ci_index.shape[0] - 1)], valid


def label_histogram(shards: ClientShards, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """int64[C, num_classes]: examples of each label held by each client."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[i], minlength=num_classes) for i in shards.indices])


def to_padded(dataset, shards: ClientShards, split_test: float = 0.2, seed: int = 0) -> ClientData:
    """Pads shards into fixed-shape client arrays and holds out a test split.

    Each client keeps ``round(split_test * n_c)`` of its own shuffled examples
    as its test split (at least one when ``split_test > 0`` and it has two or
    more), so per-client accuracy is measured on the client's own distribution.

    Args:
      dataset: a :class:`fsjax.data.Dataset` (uses ``x_train``/``y_train``).
      shards: client shards over the training set.
      split_test: fraction of each client's examples held out, in ``[0, 1)``.
      seed: seed of the hold-out shuffle.

    Returns:
      :class:`ClientData`; padding rows are zeros with label 0 and index -1.
    """
    train_idx, test_idx = hold_out(shards, split_test, seed)
    x, y, n, idx = _pad(dataset.x_train, dataset.y_train, train_idx)
    x_t, y_t, n_t, idx_t = _pad(dataset.x_train, dataset.y_train, test_idx)
    return ClientData(x, y, n, x_t, y_t, n_t, idx, idx_t)


def held_out_count(size: int, split_test: float) -> int:
    """Test rows a client of ``size`` examples holds out (at least one when
    ``split_test > 0`` and it has two or more, never all)."""
    m = int(round(split_test * size))
    if split_test > 0 and size >= 2:
        m = min(max(m, 1), size - 1)
    return m


def hold_out(shards: ClientShards, split_test: float = 0.2, seed: int = 0):
    """Each client's (training, test) index lists, sorted.

    Each client keeps ``held_out_count(n_c, split_test)`` of its own shuffled
    examples as its test split (one generator seeded ``seed``, clients in order).

    Returns:
      ``(train_lists, test_lists)``, one int array per client each.
    """
    if not 0.0 <= split_test < 1.0:
        raise ValueError(f"split_test={split_test}: expected a fraction in [0, 1)")
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for idx in shards.indices:
        idx = rng.permutation(idx)
        m = held_out_count(len(idx), split_test)
        test_idx.append(np.sort(idx[:m]))
        train_idx.append(np.sort(idx[m:]))
    return train_idx, test_idx


def _pad(x_all, y_all, index_lists):
    c = len(index_lists)
    width = max(1, max(len(i) for i in index_lists))
    idx = np.full((c, width), -1, np.int64)
    for i, rows in enumerate(index_lists):
        idx[i, :len(rows)] = rows
    safe = np.where(idx >= 0, idx, 0)
    x = x_all[safe]
    x[idx < 0] = 0
    y = np.where(idx >= 0, y_all[safe], 0).astype(np.int32)
    n = np.array([len(i) for i in index_lists], np.int32)
    return x, y, n, idx


def format_label_table(hist: np.ndarray, class_names, max_rows: int = 10) -> str:
    """A plain-text table of per-client label counts (first ``max_rows`` clients).

    Example:
      >>> print(format_label_table(np.array([[3, 0], [1, 2]]), ("cat", "dog")))
      client   cat   dog  total
           0     3     0      3
           1     1     2      3
    """
    hist = np.asarray(hist)
    names = [str(c)[:6] for c in class_names]
    width = max(5, max(len(n) for n in names), len(str(int(hist.max(initial=0)))))
    head = "client" + "".join(f" {n:>{width}}" for n in names) + "  total"
    rows = [head]
    for c in range(min(len(hist), max_rows)):
        rows.append(f"{c:>6}" + "".join(f" {int(v):>{width}}" for v in hist[c])
                    + f"  {int(hist[c].sum()):>5}")
    if len(hist) > max_rows:
        rows.append(f"   ... {len(hist) - max_rows} more clients")
    return "\n".join(rows)
