"""Finding the device-trace file, and the Markov model that stands in when there is none.

``traces(path="auto")`` asks :func:`find_traces` for a trace file, in this order:

1. ``$FSJAX_TRACES`` (a path);
2. ``device-traces.json`` in the project's shared data folder: ``$FSJAX_SHARED``
   when set, else ``../shared/data`` beside the clone (and beside the current
   directory);
3. the study's public trace file, cached in ``$FSJAX_CACHE`` (default
   ``~/.cache/fsjax``), downloaded there once (with a progress bar) when
   ``download=True`` and the machine is online (:data:`TRACES_URL`);

and when none is found it returns None: the caller then uses
:func:`markov_fallback`, a two-state Markov model whose rates match the
shipped traces' statistics (:data:`MARKOV_P_DROP`, :data:`MARKOV_P_RETURN`),
and says so in one line.

An explicit ``path`` is never replaced: a missing explicit file is an error.

Example:
  >>> path = find_traces(download=False)   # a Path, or None where nothing is found
  >>> round(MARKOV_P_RETURN / (MARKOV_P_DROP + MARKOV_P_RETURN), 3)   # long-run availability
  0.104
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger("fsjax.availability")

TRACES_FILE = "device-traces.json"
# The CUP study's public copy of the same 100 phone traces (byte-identical to the
# shipped ../shared/data/device-traces.json; pinned to a commit, checked by sha256).
TRACES_URL = ("https://raw.githubusercontent.com/stefankam/CumulativeParticipationParity/"
              "7e1350a37b395c5e1dbdbe4caa8c70234ca05c54/client/traces/traces.txt")
TRACES_SHA256 = "ec329a4c49edbe0e6a76211148020d5b93e308b67df6a5b53e9b958b72224ec4"

# Markov rates matching ../shared/data/device-traces.json (100 phones, 288 one-hour
# slots, rule charging_wifi, min_coverage 0.5, as load_traces' defaults): a device is
# available in 9.6% of slots; its available runs last 3.118 slots on average (889 runs)
# and its unavailable runs 26.75 slots (973 runs), so p_drop = 1/3.118 and
# p_return = 1/26.75 (long-run availability 0.104). Computed with load_traces and
# run lengths per device column on 2026-12-01.
MARKOV_P_DROP = 0.3207
MARKOV_P_RETURN = 0.0374
HOW_TO_GET = ("put the study's device-traces.json in ../shared/data beside the clone, "
              "set FSJAX_TRACES=PATH, or allow the download (availability.download=auto, online)")


def shared_data_dirs() -> tuple[Path, ...]:
    """``$FSJAX_SHARED`` (a shared folder or its ``data``) if set, else ``../shared/data``
    beside the fsjax source tree and beside the current directory."""
    env = os.environ.get("FSJAX_SHARED")
    if env:
        return (Path(env), Path(env) / "data")
    repo = Path(__file__).resolve().parents[2]
    dirs = [repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    return tuple(dict.fromkeys(d.resolve() for d in dirs))


def _cache_dir() -> Path:
    return Path(os.environ.get("FSJAX_CACHE") or Path.home() / ".cache" / "fsjax")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_traces(dest: Path, url: str = TRACES_URL, timeout: float = 10.0) -> Path | None:
    """Downloads the public trace file to ``dest`` (with a progress bar); None when offline.

    The file is written beside ``dest`` and renamed into place only when its
    sha256 is :data:`TRACES_SHA256`, so a partial or altered download is never used.
    """
    from tqdm.auto import tqdm

    tmp = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="device traces",
                      mininterval=0.5) as bar:
                for block in iter(lambda: resp.read(1 << 16), b""):
                    out.write(block)
                    bar.update(len(block))
        if _sha256(tmp) != TRACES_SHA256:
            log.warning("downloaded traces from %s have an unexpected sha256; not used", url)
            tmp.unlink(missing_ok=True)
            return None
        os.replace(tmp, dest)
        return dest
    except (urllib.error.URLError, OSError, ValueError) as err:
        log.info("device traces not downloaded (%s)", err)
        tmp.unlink(missing_ok=True)
        return None


def find_traces(*, env: Mapping[str, str] | None = None, roots: Sequence[Path] | None = None,
                download: bool = False) -> Path | None:
    """The first trace file found in the order of the module doc, or None.

    Args:
      env: environment to read ``FSJAX_TRACES`` from (default ``os.environ``).
      roots: shared data folders to look in (default :func:`shared_data_dirs`).
      download: fetch the public file into the cache when it is not there.

    Raises:
      ValueError: ``FSJAX_TRACES`` names a file that does not exist.
    """
    env = os.environ if env is None else env
    named = env.get("FSJAX_TRACES")
    if named:
        if not Path(named).is_file():
            raise ValueError(f"FSJAX_TRACES={named!r}: trace file not found")
        return Path(named)
    for root in shared_data_dirs() if roots is None else roots:
        if (Path(root) / TRACES_FILE).is_file():
            return Path(root) / TRACES_FILE
    cached = _cache_dir() / TRACES_FILE
    if cached.is_file():
        return cached
    if download:
        return download_traces(cached)
    return None


def markov_fallback(num_clients: int):
    """The Markov availability model with the traces' rates, announced in one line."""
    from fsjax.availability.models import markov

    log.warning("device traces not found; using a Markov availability model with the traces' "
                "rates (p_drop=%s, p_return=%s) instead. For the real traces: %s",
                MARKOV_P_DROP, MARKOV_P_RETURN, HOW_TO_GET)
    return markov(num_clients, p_drop=MARKOV_P_DROP, p_return=MARKOV_P_RETURN)
