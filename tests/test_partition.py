import numpy as np
import pytest

from fsjax import data, partition

LABELS = np.repeat(np.arange(10), 100)  # 1,000 examples, 10 balanced labels


def _owners(shards, n):
    count = np.zeros(n, int)
    for idx in shards.indices:
        np.add.at(count, idx, 1)
    return count


@pytest.mark.parametrize("make", [
    lambda seed: partition.iid(LABELS, 17, seed),
    lambda seed: partition.dirichlet(LABELS, 17, 0.5, seed, min_size=5),
])
def test_iid_and_dirichlet_assign_every_index_once(make):
    shards = make(0)
    assert shards.num_clients == 17
    np.testing.assert_array_equal(_owners(shards, len(LABELS)), 1)
    again, other = make(0), make(1)
    assert all(np.array_equal(a, b) for a, b in zip(shards.indices, again.indices))
    assert not all(np.array_equal(a, b) for a, b in zip(shards.indices, other.indices))


@pytest.mark.parametrize("k", [1, 2, 3, 10])
def test_label_subsets_exactly_k_labels(k):
    shards = partition.label_subsets(LABELS, 20, k, seed=0)
    hist = partition.label_histogram(shards, LABELS, 10)
    np.testing.assert_array_equal((hist > 0).sum(1), k)
    assert _owners(shards, len(LABELS)).max() <= 1
    holders = (hist > 0).sum(0)
    assert holders.max() - holders.min() <= 1          # balanced label coverage
    again = partition.label_subsets(LABELS, 20, k, seed=0)
    other = partition.label_subsets(LABELS, 20, k, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(shards.indices, again.indices))
    assert not all(np.array_equal(a, b) for a, b in zip(shards.indices, other.indices))


def test_label_subsets_vary_between_clients():
    hist = partition.label_histogram(partition.label_subsets(LABELS, 100, 2, 0), LABELS, 10)
    assert len({tuple(np.flatnonzero(h)) for h in hist}) > 10


def test_dirichlet_heterogeneity_grows_as_alpha_falls():
    labels = np.repeat(np.arange(10), 500)
    global_dist = np.full(10, 0.1)

    def mean_tv(alpha):
        hist = partition.label_histogram(partition.dirichlet(labels, 20, alpha, 0), labels, 10)
        p = hist / hist.sum(1, keepdims=True)
        return 0.5 * np.abs(p - global_dist).sum(1).mean()   # total-variation distance

    tv = [mean_tv(a) for a in (100.0, 1.0, 0.1)]
    assert tv[0] < 0.1 < tv[1] < tv[2], tv


def test_to_padded_round_trips_indices():
    ds = data.synthetic(10, 1000, 10, (4, 4, 3), seed=0)
    shards = partition.dirichlet(ds.y_train, 8, 0.3, 0, min_size=5)
    cd = partition.to_padded(ds, shards, split_test=0.25, seed=0)
    assert cd.x.shape[:2] == cd.y.shape == cd.idx.shape
    for c, idx in enumerate(shards.indices):
        rows = cd.idx[c, :cd.n[c]]
        test_rows = cd.idx_test[c, :cd.n_test[c]]
        np.testing.assert_array_equal(np.sort(np.concatenate([rows, test_rows])), idx)
        assert (cd.idx[c, cd.n[c]:] == -1).all() and (cd.idx_test[c, cd.n_test[c]:] == -1).all()
        np.testing.assert_array_equal(cd.x[c, :cd.n[c]], ds.x_train[rows])
        np.testing.assert_array_equal(cd.y_test[c, :cd.n_test[c]], ds.y_train[test_rows])
        assert cd.n_test[c] == round(0.25 * len(idx))
    assert (cd.x[cd.idx < 0] == 0).all()


@pytest.mark.parametrize("call, field", [
    (lambda: partition.dirichlet(LABELS, 5, 0.0), "alpha"),
    (lambda: partition.dirichlet(LABELS, 5, -1.0), "alpha"),
    (lambda: partition.iid(LABELS, 5000), "num_clients"),
    (lambda: partition.iid(LABELS, 0), "num_clients"),
    (lambda: partition.label_subsets(LABELS, 5, 0, 0), "labels_per_client"),
    (lambda: partition.label_subsets(LABELS, 5, 11, 0), "labels_per_client"),
    (lambda: partition.to_padded(None, partition.iid(LABELS, 2), split_test=1.0), "split_test"),
])
def test_bad_input_names_the_argument(call, field):
    with pytest.raises(ValueError, match=field):
        call()


@pytest.mark.parametrize("name, kwargs", [
    ("iid", {}), ("dirichlet", {"alpha": 0.3, "min_size": 5}),
    ("label_subsets", {"labels_per_client": 2})])
@pytest.mark.parametrize("cap", [0, 3])
def test_index_lists_gather_the_old_padded_batches(name, kwargs, cap):
    """FederatedData (flat index lists, gathered in jit) == the old padded layout."""
    import jax
    import jax.numpy as jnp

    from fsjax import clients, config

    ds = data.synthetic(10, 600, 10, (4, 4, 3), seed=0)
    sets = [f"partition.name={name}", "partition.num_clients=9",
            f"partition.max_test_per_client={cap}"]
    sets += [f"partition.{k}={v}" for k, v in kwargs.items()]
    p = config.load(None, overrides=tuple(sets)).partition
    fd = clients.prepare(ds, p, seed=3)
    # The old layout, built here as the reference.
    cd = partition.to_padded(ds, clients.partition_clients(ds.y_train, p, 3), p.split_test, 3)
    x_t, y_t, n_t = cd.x_test, cd.y_test, cd.n_test
    if cap:
        x_t, y_t, n_t = x_t[:, :cap], y_t[:, :cap], np.minimum(n_t, cap)
    assert fd.index.shape[0] == cd.n.sum()          # storage O(examples held)
    ids = jnp.array([4, 0, 8, 4], jnp.int32)        # any clients, repeats allowed
    x, y, n = jax.jit(fd.gather)(ids)
    np.testing.assert_array_equal(x, cd.x[np.asarray(ids)])
    np.testing.assert_array_equal(y, cd.y[np.asarray(ids)])
    np.testing.assert_array_equal(n, cd.n[np.asarray(ids)])
    for got, want in zip(fd.gather(jnp.arange(9), test=True), (x_t, y_t, n_t)):
        np.testing.assert_array_equal(got, want)
    hist = partition.label_histogram(partition.ClientShards(
        [cd.idx[c, :cd.n[c]] for c in range(9)]), ds.y_train, 10)
    np.testing.assert_array_equal(fd.label_hist, hist)


def test_pack_and_padded_rows_match_a_loop():
    lists = [np.array([5, 1]), np.array([9]), np.array([0, 2, 7, 3])]
    ci = partition.pack(lists)
    rows, valid = partition.padded_rows(ci.index, ci.offsets, ci.sizes, np.array([2, 0, 1]), 4)
    for r, v, c in zip(np.asarray(rows), np.asarray(valid), [2, 0, 1]):
        np.testing.assert_array_equal(r[v], lists[c])
        assert v.sum() == len(lists[c])


def test_sample_population_is_deterministic_per_seed_and_client():
    import jax.numpy as jnp

    pop = partition.sample(LABELS, 10**6, examples_per_client=20, seed=4)
    rows = np.asarray(partition.sample_rows(pop, jnp.array([0, 999_999, 5])))
    assert rows.shape == (3, 20) and rows.min() >= 0 and rows.max() < len(LABELS)
    # Per client: independent of which other clients are drawn, and of C.
    small = partition.sample(LABELS, 10, examples_per_client=20, seed=4)
    np.testing.assert_array_equal(partition.sample_rows(small, jnp.array([5])), rows[2:])
    np.testing.assert_array_equal(partition.sample_rows(pop, jnp.array([999_999])), rows[1:2])
    other = partition.sample(LABELS, 10**6, examples_per_client=20, seed=5)
    assert not np.array_equal(partition.sample_rows(other, jnp.array([0])), rows[:1])
    assert not np.array_equal(rows[0], rows[2])


@pytest.mark.parametrize("kwargs, field", [
    (dict(num_clients=0), "num_clients"), (dict(examples_per_client=1), "examples_per_client")])
def test_sample_rejects_bad_arguments(kwargs, field):
    args = dict(num_clients=5, examples_per_client=10) | kwargs
    with pytest.raises(ValueError, match=field):
        partition.sample(LABELS, **args)


# ----------------------------------------------------------------- label_ring (REFERENCE B.4)

RING_LABELS = np.random.default_rng(7).integers(0, 10, 3000)   # unsorted, uneven labels


@pytest.mark.parametrize("k", [1, 2, 3])
def test_label_ring_labels_by_hand(k):
    shards = partition.label_ring(RING_LABELS, 23, labels_per_client=k, examples_per_client=0,
                                  seed=0)
    # Hand-written ring for k = 2: client 9 holds {9, 0}, client 10 holds {0, 1}, ...
    if k == 2:
        want = [{0, 1}, {1, 2}, {2, 3}, {3, 4}, {4, 5}, {5, 6}, {6, 7}, {7, 8}, {8, 9}, {9, 0}]
        assert [set(RING_LABELS[i].tolist()) for i in shards.indices[:10]] == want
        assert set(RING_LABELS[shards.indices[21]].tolist()) == {1, 2}
    for i, idx in enumerate(shards.indices):
        held = {(i + o) % 10 for o in range(k)}
        # examples_per_client=0: every row of the client's labels, nothing else.
        np.testing.assert_array_equal(idx, np.flatnonzero(np.isin(RING_LABELS, list(held))))


def test_label_ring_sizes_and_rows():
    shards = partition.label_ring(RING_LABELS, 30, labels_per_client=2, examples_per_client=100,
                                  seed=3)
    assert shards.num_clients == 30
    np.testing.assert_array_equal(shards.sizes, 100)
    for i, idx in enumerate(shards.indices):
        assert len(np.unique(idx)) == 100                       # no row twice in a client
        assert set(RING_LABELS[idx].tolist()) <= {i % 10, (i + 1) % 10}
    # The ring overlaps: neighbours share a label, so rows may be shared between clients.
    assert len(set(shards.indices[0]) & set(shards.indices[10])) > 0
    hist = partition.label_histogram(shards, RING_LABELS, 10)
    assert ((hist > 0).sum(1) <= 2).all() and (hist.sum(1) == 100).all()
    # Fewer rows than asked for: the client keeps them all.
    few = np.array([0, 0, 1, 2, 2, 2])
    got = partition.label_ring(few, 3, labels_per_client=1, examples_per_client=100, seed=0)
    assert [i.tolist() for i in got.indices] == [[0, 1], [2], [3, 4, 5]]


def test_label_ring_is_a_seeded_shuffle_per_client():
    a = partition.label_ring(RING_LABELS, 12, 2, 50, seed=5)
    again = partition.label_ring(RING_LABELS, 12, 2, 50, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a.indices, again.indices))
    # Client i's rows depend on (seed, i) only, not on the population size.
    small = partition.label_ring(RING_LABELS, 3, 2, 50, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(small.indices, a.indices))
    # The reference: shuffle the rows of the client's labels (data-set order) with
    # default_rng([seed, i]) and keep the first E.
    for i in (0, 7, 11):
        rows = np.flatnonzero(np.isin(RING_LABELS, [i % 10, (i + 1) % 10]))
        want = np.sort(np.random.default_rng([5, i]).permutation(rows)[:50])
        np.testing.assert_array_equal(a.indices[i], want)
    # Clients 0 and 10 hold the same labels but draw different rows; another seed differs.
    assert not np.array_equal(a.indices[0], a.indices[10])
    other = partition.label_ring(RING_LABELS, 12, 2, 50, seed=6)
    assert not any(np.array_equal(x, y) for x, y in zip(a.indices, other.indices))


@pytest.mark.parametrize("kwargs, field", [
    (dict(labels_per_client=0), "labels_per_client"),
    (dict(labels_per_client=11), "labels_per_client"),
    (dict(examples_per_client=-1), "examples_per_client"),
    (dict(num_clients=0), "num_clients"),
    (dict(seed=-1), "seed")])
def test_label_ring_rejects_bad_arguments(kwargs, field):
    args = dict(num_clients=5, labels_per_client=2, examples_per_client=10, seed=0) | kwargs
    with pytest.raises(ValueError, match=field):
        partition.label_ring(RING_LABELS, **args)


def test_label_ring_through_prepare_holds_out_nothing():
    """The study's setting: registered name, 100 rows per client, split_test 0."""
    from fsjax import clients, config

    ds = data.synthetic(10, 2000, 50, (4, 4, 1), seed=0)
    sets = ("partition.name=label_ring", "partition.num_clients=13",
            "partition.labels_per_client=2", "partition.examples_per_client=100",
            "partition.split_test=0", "eval.client_accuracy=label_set")
    try:
        p = config.load(None, overrides=sets).partition
    except (ValueError, TypeError):     # config not wired yet: the same fields by hand
        import types
        p = types.SimpleNamespace(name="label_ring", num_clients=13, labels_per_client=2,
                                  examples_per_client=100, split_test=0.0,
                                  max_test_per_client=0)
    fd = clients.prepare(ds, p, seed=4)
    np.testing.assert_array_equal(fd.n, 100)
    np.testing.assert_array_equal(fd.n_test, 0)
    shards = partition.label_ring(ds.y_train, 13, 2, 100, seed=4)
    np.testing.assert_array_equal(fd.label_hist,
                                  partition.label_histogram(shards, ds.y_train, 10))
    held = np.asarray(fd.label_hist) > 0
    for i in range(13):
        assert set(np.flatnonzero(held[i]).tolist()) <= {i % 10, (i + 1) % 10}
    x, y, n = fd.gather(np.array([12, 3]))
    np.testing.assert_array_equal(np.sort(np.asarray(fd.rows(np.array([12]))[0][0])),
                                  shards.indices[12])
    assert x.shape[:2] == (2, 100) and (np.asarray(n) == 100).all()
