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
