"""Data sets: CIFAR-10 from the tfds cache or a local archive, and generated data.

Every loader returns a :class:`Dataset` of uint8 images and int32 labels held in
host memory (numpy); the simulation moves what it needs onto the device.

Sources for CIFAR-10, in the order ``source="auto"`` tries them:

1. ``tfds``: ``tfds.builder("cifar10")`` when it is already prepared in the
   tfds data dir (``TFDS_DATA_DIR``).
2. ``FSJAX_CIFAR10_ZIP``: a zip (or extracted folder) laid out as
   ``cifar10/{train,test}/<class-name>/<n>.jpg``, like the shipped
   ``../shared/data/cifar10-jpeg.zip``.
3. ``../shared/data/cifar10-jpeg.zip`` beside the clone (or the current
   directory; ``$FSJAX_SHARED`` names another shared folder).
4. with ``download="auto"`` (or True) and the machine online: a tfds download
   (about 160 MB, with tfds' progress bar), prepared in the tfds data dir.

When none works the error is one line saying how to get the data; the
simulation then falls back to generated data when ``data.fallback=synthetic``.

A folder or zip is decoded once and cached as ``.npz`` in ``cache_dir``
(default ``$FSJAX_CACHE`` or ``~/.cache/fsjax``); a cache that fails to load or
has the wrong shapes is rebuilt, never trusted. The cache is written with
:func:`fsjax.files.atomic_writer`, so a crash or a second process never sees
half a file. ``source="tfds"`` needs the ``tfds`` extra
(``pip install 'fsjax[tfds]'``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from fsjax.extras import require
from fsjax.files import atomic_writer

log = logging.getLogger(__name__)

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
CIFAR10_SHAPE = (32, 32, 3)
_SHUFFLE_SEED = 0
_CACHE_VERSION = 2  # 2: examples shuffled (a class-sorted test set misleads test[:n])


@dataclasses.dataclass(frozen=True)
class Dataset:
    """An image classification data set in host memory.

    Attributes:
      x_train: uint8[N, H, W, C] training images.
      y_train: int32[N] training labels in ``[0, num_classes)``.
      x_test: uint8[M, H, W, C] test images.
      y_test: int32[M] test labels.
      class_names: one name per class.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def default_cache_dir() -> Path:
    """``$FSJAX_CACHE`` if set, else ``~/.cache/fsjax``."""
    return Path(os.environ.get("FSJAX_CACHE") or Path.home() / ".cache" / "fsjax")


SHARED_ZIP = "cifar10-jpeg.zip"
HOW_TO_GET = ("prepare it with tensorflow-datasets (data.download=auto when online), set "
              "FSJAX_CIFAR10_ZIP to a zip/folder laid out as cifar10/{train,test}/<class>/<n>.jpg, "
              "or put cifar10-jpeg.zip in ../shared/data beside the clone")


def shared_zip_candidates() -> tuple[Path, ...]:
    """``../shared/data/cifar10-jpeg.zip`` beside the fsjax source tree and the current directory.

    ``$FSJAX_SHARED`` (the shared folder or its ``data``), when set, replaces both.
    """
    env = os.environ.get("FSJAX_SHARED")
    if env:
        return (Path(env) / SHARED_ZIP, Path(env) / "data" / SHARED_ZIP)
    repo = Path(__file__).resolve().parents[1]
    paths = [repo.parent / "shared" / "data" / SHARED_ZIP,
             Path.cwd().parent / "shared" / "data" / SHARED_ZIP]
    return tuple(dict.fromkeys(p.resolve() for p in paths))


def _online(host: str = "www.cs.toronto.edu", port: int = 443, timeout: float = 3.0) -> bool:
    import socket
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _download_wanted(download) -> bool:
    if download not in ("auto", "never", True, False):
        raise ValueError(f"load_cifar10(download={download!r}): expected 'auto', 'never', "
                         "True or False")
    return download in ("auto", True)


def load_cifar10(source: str | os.PathLike = "auto", cache_dir: str | os.PathLike | None = None,
                 *, download: bool | str = False, progress: bool = True) -> Dataset:
    """Loads CIFAR-10 as uint8 arrays.

    Args:
      source: ``"auto"`` (the order in the module doc), ``"tfds"``,
        or a path to a zip or folder laid out as
        ``cifar10/{train,test}/<class>/<n>.jpg``.
      cache_dir: where the decoded ``.npz`` cache lives (default
        :func:`default_cache_dir`).
      download: let tfds download and prepare CIFAR-10 (``True``/``"auto"``;
        ``"auto"`` only when online; ``False``/``"never"``: never).
      progress: show a progress bar while decoding.

    Returns:
      A :class:`Dataset` with 50,000 train and 10,000 test images.

    Raises:
      ValueError: unknown source, missing file, wrong layout, or no source
        found by ``"auto"``.
      fsjax.extras.MissingExtra: ``source="tfds"`` without the ``tfds`` extra.

    Example:
      >>> ds = load_cifar10("../shared/data/cifar10-jpeg.zip")  # doctest: +SKIP
      >>> ds.x_train.shape                                      # doctest: +SKIP
      (50000, 32, 32, 3)
    """
    wanted = _download_wanted(download)
    if isinstance(source, str) and source == "tfds":
        return _load_tfds(download=wanted)
    if isinstance(source, str) and source == "auto":
        if _tfds_prepared():
            return _load_tfds(download=False)
        env = os.environ.get("FSJAX_CIFAR10_ZIP")
        if env:
            return _load_archive(Path(env), cache_dir, progress)
        for candidate in shared_zip_candidates():
            if candidate.is_file():
                return _load_archive(candidate, cache_dir, progress)
        why = "downloads are off (data.download=never)"
        if wanted:
            import importlib.util
            if importlib.util.find_spec("tensorflow_datasets") is None:
                why = "tensorflow-datasets is not installed (pip install 'fsjax[tfds]')"
            elif not _online():
                why = "the machine is offline"
            else:
                log.info("CIFAR-10: downloading with tensorflow-datasets")
                try:
                    return _load_tfds(download=True)
                except Exception as err:  # noqa: BLE001 - tfds fails in many ways offline
                    why = f"the tfds download failed ({type(err).__name__}: " \
                          f"{(str(err).splitlines() or [''])[0][:200]})"
        raise ValueError(f"no CIFAR-10 found (no tfds cache, FSJAX_CIFAR10_ZIP unset, no "
                         f"../shared/data/{SHARED_ZIP}; not downloaded: {why}); to get it: "
                         f"{HOW_TO_GET}")
    path = Path(source)
    if not path.exists():
        raise ValueError(
            f"load_cifar10(source={str(source)!r}): no such file or folder; expected "
            "'auto', 'tfds', or the path of a CIFAR-10 zip/folder")
    return _load_archive(path, cache_dir, progress)


# ----------------------------------------------------------------------------- tfds


def _tfds_data_dir() -> Path:
    return Path(os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets")


def _tfds_prepared() -> bool:
    # Looking first avoids importing tfds (slow, and it logs warnings) when
    # there is nothing prepared.
    if not (_tfds_data_dir() / "cifar10").is_dir():
        return False
    try:
        import tensorflow_datasets as tfds
        return bool(tfds.builder("cifar10", data_dir=str(_tfds_data_dir())).is_prepared())
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return False


def _load_tfds(download: bool) -> Dataset:
    require("tfds", "load_cifar10(source='tfds')")
    import tensorflow_datasets as tfds

    builder = tfds.builder("cifar10", data_dir=str(_tfds_data_dir()))
    if not builder.is_prepared():
        if not download:
            raise ValueError(
                f"load_cifar10(source='tfds'): cifar10 is not prepared in the tfds data dir "
                f"{builder.data_dir!r}; pass download=True to let tfds fetch it, or use the zip")
        builder.download_and_prepare()
    splits = {}
    for split in ("train", "test"):
        try:  # tf-free reading works for the array_record file format
            source = builder.as_data_source(split=split)
            items = [source[i] for i in range(len(source))]
            x = np.stack([it["image"] for it in items])
            y = np.array([it["label"] for it in items])
        except Exception:  # noqa: BLE001 - tfrecord needs tensorflow
            try:
                data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
            except ImportError as err:
                raise ValueError(
                    "load_cifar10(source='tfds'): the prepared cifar10 is in tfrecord format, "
                    "which needs tensorflow to read; install tensorflow or use the zip") from err
            x, y = data["image"], data["label"]
        splits[split] = (x.astype(np.uint8), y.astype(np.int32))
    names = tuple(builder.info.features["label"].names)
    return _checked(Dataset(*splits["train"], *splits["test"], class_names=names), "tfds")


# -------------------------------------------------------------------------- archive


def _cache_path(path: Path, cache_dir) -> Path:
    st = path.stat()
    key = f"v{_CACHE_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir or default_cache_dir()) / f"cifar10-{digest}.npz"


def _load_archive(path: Path, cache_dir, progress: bool) -> Dataset:
    cache = _cache_path(path, cache_dir)
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                ds = Dataset(z["x_train"], z["y_train"], z["x_test"], z["y_test"],
                             tuple(str(c) for c in z["class_names"]))
            return _checked(ds, str(cache))
        except Exception as err:  # noqa: BLE001 - a corrupt cache is rebuilt
            log.warning("CIFAR-10 cache %s is unreadable (%s); rebuilding it", cache, err)
    ds = _decode_archive(path, progress)
    _write_cache(cache, ds)
    return ds


def _list_archive(path: Path) -> tuple[list[str], callable]:
    """Returns the member names (posix, relative) and a reader for one member."""
    if path.is_dir():
        root = path
        names = [p.relative_to(root).as_posix() for p in root.rglob("*.jpg")]
        return names, lambda name: (root / name).read_bytes()
    if not zipfile.is_zipfile(path):
        raise ValueError(f"load_cifar10(source={str(path)!r}): not a zip file or folder")
    zf = zipfile.ZipFile(path)
    names = [n for n in zf.namelist() if n.endswith(".jpg")]
    return names, zf.read


def _decode_archive(path: Path, progress: bool) -> Dataset:
    from PIL import Image
    from tqdm.auto import tqdm

    names, read = _list_archive(path)
    by_split: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for name in names:
        parts = name.split("/")
        # Accept both cifar10/<split>/<class>/<n>.jpg and <split>/<class>/<n>.jpg
        # (an extracted folder pointed at its inner cifar10/ directory).
        if len(parts) >= 3 and parts[-3] in by_split:
            by_split[parts[-3]].append((parts[-2], name))
    classes = sorted({c for items in by_split.values() for c, _ in items})
    if not by_split["train"] or not by_split["test"] or len(classes) < 2:
        raise ValueError(
            f"load_cifar10(source={str(path)!r}): wrong layout; expected "
            "cifar10/{train,test}/<class-name>/<n>.jpg with at least two classes, found "
            f"{len(by_split['train'])} train and {len(by_split['test'])} test images")
    if set(classes) == set(CIFAR10_CLASSES):
        classes = list(CIFAR10_CLASSES)
    index = {c: i for i, c in enumerate(classes)}

    arrays = []
    total = len(by_split["train"]) + len(by_split["test"])
    with tqdm(total=total, desc="decoding CIFAR-10", unit="img", disable=not progress,
              mininterval=1.0) as bar:
        for split in ("train", "test"):
            items = sorted(by_split[split], key=lambda item: (index[item[0]], item[1]))
            x = np.empty((len(items), *CIFAR10_SHAPE), np.uint8)
            for i, (_, name) in enumerate(items):
                with Image.open(io.BytesIO(read(name))) as img:
                    arr = np.asarray(img.convert("RGB"))
                if arr.shape != CIFAR10_SHAPE:
                    raise ValueError(
                        f"load_cifar10(source={str(path)!r}): image {name} has shape "
                        f"{arr.shape}, expected {CIFAR10_SHAPE}")
                x[i] = arr
                bar.update()
            y = np.array([index[c] for c, _ in items], np.int32)
            # A fixed shuffle, so that any prefix of a split is a fair sample of it.
            order = np.random.default_rng(_SHUFFLE_SEED).permutation(len(y))
            arrays += [x[order], y[order]]
    return Dataset(*arrays, class_names=tuple(classes))


def _write_cache(cache: Path, ds: Dataset) -> None:
    try:
        with atomic_writer(cache) as f:
            np.savez(f, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test,
                     y_test=ds.y_test, class_names=np.array(ds.class_names))
    except OSError as err:  # a read-only cache dir costs speed, not correctness
        log.warning("could not write the CIFAR-10 cache %s: %s", cache, err)


def _checked(ds: Dataset, where: str) -> Dataset:
    ok = (ds.x_train.ndim == 4 and ds.x_train.dtype == np.uint8
          and ds.x_train.shape[0] == ds.y_train.shape[0]
          and ds.x_test.shape[0] == ds.y_test.shape[0]
          and ds.x_train.shape[1:] == ds.x_test.shape[1:]
          and ds.y_train.min(initial=0) >= 0 and ds.y_train.max(initial=0) < len(ds.class_names))
    if not ok:
        raise ValueError(f"CIFAR-10 from {where} has inconsistent arrays")
    return dataclasses.replace(ds, y_train=ds.y_train.astype(np.int32),
                               y_test=ds.y_test.astype(np.int32))


# ------------------------------------------------------------------------ synthetic


def synthetic(num_classes: int = 10, n_train: int = 2000, n_test: int = 500,
              image_shape: tuple[int, ...] = (32, 32, 3), seed: int = 0,
              noise: float = 48.0) -> Dataset:
    """Learnable generated images: each class has its own mean image plus noise.

    The class means are random patterns in ``[48, 208]``; every example is
    its class mean plus Gaussian pixel noise (std ``noise``), clipped to uint8.
    Labels are balanced; a linear model separates the classes well above chance.

    Args:
      num_classes: number of classes (>= 2).
      n_train: number of training examples.
      n_test: number of test examples.
      image_shape: shape of one image, e.g. ``(32, 32, 3)`` or ``(8, 8, 1)``.
      seed: seed of the generator.
      noise: pixel noise standard deviation.

    Returns:
      A :class:`Dataset` with class names ``"class0"``, ``"class1"``, ...

    Example:
      >>> ds = synthetic(10, 200, 50, (8, 8, 3), seed=0)
      >>> ds.x_train.shape, ds.y_train[:4]
      ((200, 8, 8, 3), array([0, 1, 2, 3], dtype=int32))
    """
    if num_classes < 2:
        raise ValueError(f"synthetic(num_classes={num_classes}): expected at least 2 classes")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"synthetic(n_train={n_train}, n_test={n_test}): expected positive sizes")
    rng = np.random.default_rng(seed)
    means = rng.uniform(48, 208, size=(num_classes, *image_shape))

    def draw(n, block=4096):
        # In blocks of rows: the same stream of normals as one draw, without
        # float64 temporaries of the whole set (1.2 GB each for 50,000 CIFAR images).
        y = (np.arange(n) % num_classes).astype(np.int32)
        x = np.empty((n, *image_shape), np.uint8)
        for start in range(0, n, block):
            rows = y[start:start + block]
            z = means[rows] + rng.normal(0.0, noise, size=(len(rows), *image_shape))
            x[start:start + block] = np.clip(np.rint(z), 0, 255)
        return x, y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return Dataset(x_train, y_train, x_test, y_test,
                   class_names=tuple(f"class{i}" for i in range(num_classes)))
