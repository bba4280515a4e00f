"""Shared pytest set-up: JAX's compilation cache, the real-data skip, and data fixtures.

Test lanes (markers are declared in pyproject.toml):

- ``make test`` runs everything (what CI runs); tests marked ``cifar10`` are
  skipped unless ``FSJAX_CIFAR10_ZIP`` names the archive (the Makefile sets it
  when ``../shared/data/cifar10-jpeg.zip`` exists).
- ``make test-fast`` leaves out ``slow``, ``cifar10`` and ``processes`` (tests
  that start subprocesses or servers).

Compiling dominates the suite's time on CPU, and many tests compile the same
round (a new ``Simulation`` has new jitted functions, so nothing is shared in
memory). JAX's persistent compilation cache keeps every executable in
``.cache/jax`` (git-ignored) keyed by the computation, so a test, a later
test, a subprocess the test starts, and the next run of the suite reuse it.
The environment variables are set before JAX is imported so subprocesses
(``fsjax run``, the server and clients) inherit them; set
``JAX_COMPILATION_CACHE_DIR`` yourself to move the cache, or to an empty
string to switch it off. A cached executable is the same compiled code, so
results are bit for bit those of a fresh compilation.
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FSJAX_SHARED", REPO.parent / "shared" / "data"))

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".cache" / "jax"))
# Cache every compilation: the many small ones add up too.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# No size limit (JAX's default): with one, every write scans the whole folder
# and processes without the limit break its bookkeeping. `make clean` empties it.

import jax  # noqa: E402 - after the environment above
import pytest  # noqa: E402

# In case a plugin imported JAX before this file set the environment.
if os.environ["JAX_COMPILATION_CACHE_DIR"]:
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                      int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("FSJAX_CIFAR10_ZIP"):
        return
    skip = pytest.mark.skip(reason="FSJAX_CIFAR10_ZIP is not set (real CIFAR-10 tests)")
    for item in items:
        if "cifar10" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cifar10_zip() -> Path:
    return Path(os.environ["FSJAX_CIFAR10_ZIP"])


@pytest.fixture(scope="session")
def cifar10(cifar10_zip):
    """Real CIFAR-10, decoded once per machine into the FSJAX_CACHE cache."""
    from fsjax import data
    return data.load_cifar10(cifar10_zip, progress=False)
