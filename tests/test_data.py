import io
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from fsjax import data


def _write_tiny_archive(root, classes=("cat", "dog"), n=(3, 2), as_zip=True):
    """A tiny archive in the shipped layout; returns its path and the images written."""
    rng = np.random.default_rng(0)
    images = {}
    files = {}
    for split, count in zip(("train", "test"), n):
        for c in classes:
            for i in range(count):
                # Flat colours survive JPEG exactly enough to check decoding.
                img = np.full((32, 32, 3), rng.integers(0, 256, 3), np.uint8)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="JPEG", quality=95)
                name = f"cifar10/{split}/{c}/{i:04d}.jpg"
                files[name] = buf.getvalue()
                images[name] = img
    if as_zip:
        path = root / "tiny.zip"
        with zipfile.ZipFile(path, "w") as zf:
            for name, b in files.items():
                zf.writestr(name, b)
    else:
        path = root / "tiny"
        for name, b in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(b)
    return path, images


@pytest.mark.parametrize("as_zip", [True, False])
def test_archive_decodes_labels_and_pixels(tmp_path, as_zip):
    path, images = _write_tiny_archive(tmp_path, as_zip=as_zip)
    ds = data.load_cifar10(path, cache_dir=tmp_path / "cache", progress=False)
    assert ds.class_names == ("cat", "dog")
    assert ds.x_train.shape == (6, 32, 32, 3) and ds.x_train.dtype == np.uint8
    assert sorted(ds.y_train.tolist()) == [0, 0, 0, 1, 1, 1]
    assert sorted(ds.y_test.tolist()) == [0, 0, 1, 1]
    # Every decoded image matches one written with its label (order is shuffled).
    for x, y in zip(ds.x_train, ds.y_train):
        cls = ("cat", "dog")[y]
        diffs = [np.abs(x.astype(int) - images[f"cifar10/train/{cls}/{i:04d}.jpg"]).max()
                 for i in range(3)]
        assert min(diffs) <= 3


def test_second_load_reads_the_cache_and_a_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    path, _ = _write_tiny_archive(tmp_path)
    cache_dir = tmp_path / "cache"
    first = data.load_cifar10(path, cache_dir=cache_dir, progress=False)
    (cache,) = cache_dir.glob("*.npz")
    decode = data._decode_archive
    monkeypatch.setattr(data, "_decode_archive", lambda *a: pytest.fail("cache not used"))
    cached = data.load_cifar10(path, cache_dir=cache_dir, progress=False)
    np.testing.assert_array_equal(first.x_train, cached.x_train)
    assert cached.class_names == first.class_names
    monkeypatch.setattr(data, "_decode_archive", decode)
    cache.write_bytes(b"not an npz")
    rebuilt = data.load_cifar10(path, cache_dir=cache_dir, progress=False)
    np.testing.assert_array_equal(first.x_train, rebuilt.x_train)
    with np.load(cache) as z:
        assert z["x_train"].shape == (6, 32, 32, 3)


def test_bad_sources(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="no such file"):
        data.load_cifar10(tmp_path / "missing.zip")
    (tmp_path / "bad.zip").write_bytes(b"nonsense")
    with pytest.raises(ValueError, match="not a zip"):
        data.load_cifar10(tmp_path / "bad.zip", cache_dir=tmp_path)
    with zipfile.ZipFile(tmp_path / "flat.zip", "w") as zf:
        zf.writestr("images/0.jpg", b"x")
    with pytest.raises(ValueError, match="wrong layout"):
        data.load_cifar10(tmp_path / "flat.zip", cache_dir=tmp_path)
    monkeypatch.delenv("FSJAX_CIFAR10_ZIP", raising=False)
    monkeypatch.setenv("FSJAX_SHARED", str(tmp_path / "no-shared"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(data, "_tfds_prepared", lambda: False)
    with pytest.raises(ValueError, match="FSJAX_CIFAR10_ZIP"):
        data.load_cifar10("auto")


@pytest.fixture
def nothing_found(tmp_path, monkeypatch):
    monkeypatch.delenv("FSJAX_CIFAR10_ZIP", raising=False)
    monkeypatch.setenv("FSJAX_SHARED", str(tmp_path / "shared"))
    monkeypatch.setenv("FSJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "_tfds_prepared", lambda: False)
    return tmp_path


def test_auto_finds_the_shared_zip_after_the_env_zip(nothing_found):
    shared = nothing_found / "shared" / "data"
    shared.mkdir(parents=True)
    path, _ = _write_tiny_archive(shared)
    path.rename(shared / "cifar10-jpeg.zip")
    ds = data.load_cifar10("auto", progress=False)
    assert len(ds.y_train) == 6


def test_auto_download_only_when_asked_and_online(nothing_found, monkeypatch):
    calls = []
    monkeypatch.setattr(data, "_load_tfds", lambda download: calls.append(download) or "ds")
    with pytest.raises(ValueError, match="data.download=never") as err:
        data.load_cifar10("auto", download="never")
    assert "\n" not in str(err.value)
    import importlib.util
    if importlib.util.find_spec("tensorflow_datasets") is None:
        with pytest.raises(ValueError, match="not installed"):
            data.load_cifar10("auto", download="auto")
        return
    monkeypatch.setattr(data, "_online", lambda *a, **k: False)
    with pytest.raises(ValueError, match="offline"):
        data.load_cifar10("auto", download="auto")
    monkeypatch.setattr(data, "_online", lambda *a, **k: True)
    assert data.load_cifar10("auto", download="auto") == "ds" and calls == [True]


def test_tfds_source_never_downloads_unasked(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: False)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                        lambda self, *a, **k: pytest.fail("must not download"))
    with pytest.raises(ValueError, match="not prepared"):
        data.load_cifar10("tfds")


def test_tfds_source_without_the_tfds_extra_is_one_line_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"'tfds' extra: pip install 'fsjax\[tfds\]'"):
        data.load_cifar10("tfds")


def test_auto_uses_env_zip(tmp_path, monkeypatch):
    path, _ = _write_tiny_archive(tmp_path)
    monkeypatch.setattr(data, "_tfds_prepared", lambda: False)
    monkeypatch.setenv("FSJAX_CIFAR10_ZIP", str(path))
    monkeypatch.setenv("FSJAX_CACHE", str(tmp_path / "c"))
    ds = data.load_cifar10("auto", progress=False)
    assert len(ds.y_train) == 6 and list((tmp_path / "c").glob("*.npz"))


def test_synthetic_is_learnable_and_seeded():
    ds = data.synthetic(4, 400, 200, (6, 6, 1), seed=3)
    again = data.synthetic(4, 400, 200, (6, 6, 1), seed=3)
    other = data.synthetic(4, 400, 200, (6, 6, 1), seed=4)
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    assert not np.array_equal(ds.x_train, other.x_train)
    assert np.bincount(ds.y_train).tolist() == [100] * 4
    # Nearest class mean (from train) classifies test well above chance (0.25).
    xf = ds.x_train.reshape(400, -1).astype(float)
    means = np.stack([xf[ds.y_train == c].mean(0) for c in range(4)])
    d = ((ds.x_test.reshape(200, -1)[:, None, :] - means[None]) ** 2).sum(-1)
    assert (d.argmin(1) == ds.y_test).mean() > 0.9
    with pytest.raises(ValueError, match="num_classes"):
        data.synthetic(1, 10, 10)


@pytest.mark.cifar10
def test_shipped_cifar10_zip_decodes_once_then_loads_the_cache(cifar10_zip, tmp_path,
                                                              monkeypatch):
    ds = data.load_cifar10(cifar10_zip, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("cifar10-*.npz"))) == 1
    # The second load reads the cache: decoding again would fail the test.
    monkeypatch.setattr(data, "_decode_archive", lambda *a: pytest.fail("decoded twice"))
    cached = data.load_cifar10(cifar10_zip, cache_dir=tmp_path, progress=False)
    assert ds.x_train.shape == (50000, 32, 32, 3) and ds.x_test.shape == (10000, 32, 32, 3)
    assert np.bincount(ds.y_train).tolist() == [5000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.class_names == data.CIFAR10_CLASSES
    np.testing.assert_array_equal(ds.x_test, cached.x_test)
    np.testing.assert_array_equal(ds.y_train, cached.y_train)
    # Shuffled: the first 1,000 test images hold every class.
    assert len(np.unique(ds.y_test[:1000])) == 10
