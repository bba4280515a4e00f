"""Shared pytest set-up: markers and small data fixtures."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FSJAX_SHARED", REPO.parent / "shared" / "data"))


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
