"""Atomic file writes: the one helper every file fsjax writes goes through.

A reader (a resumed run, ``mlflow ui``, a test polling a CSV, a second process
loading the data cache) must see either the old file or the new one, never a
half-written one, even if the writer crashes or the machine loses power. So
the bytes go to a temporary file in the same directory (same file system, so
the rename is atomic), are flushed and ``fsync``-ed, and the temporary file is
renamed over the target with :func:`os.replace`. On any error the temporary
file is removed and the old target is left as it was.

Named ``files`` rather than ``io`` so it is never confused with the standard
library's :mod:`io` (which :mod:`fsjax.data` also uses).

Example:
  >>> import pathlib, tempfile
  >>> path = pathlib.Path(tempfile.mkdtemp()) / "sub" / "a.csv"
  >>> atomic_write(path, "metric,value\\n")
  >>> path.read_text()
  'metric,value\\n'
  >>> with atomic_writer(path) as f:
  ...     _ = f.write(b"x,1\\n")
  >>> path.read_bytes(), sorted(p.name for p in path.parent.iterdir())
  (b'x,1\\n', ['a.csv'])
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# The process umask, read once at import: mkstemp creates files 0600, and a
# file replaced by ours should get the permissions a plain open() gives it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file object whose contents replace ``path`` atomically on success.

    Creates missing parent directories. Use it to stream large data (e.g.
    ``np.savez(f, ...)``) without building the bytes in memory first.

    Args:
      path: the file to (re)write.

    Yields:
      A binary file object open for writing (a temporary file beside ``path``).

    Raises:
      OSError: the directory or file cannot be written; ``path`` is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Writes ``data`` to ``path`` atomically (see the module docstring).

    Args:
      path: the file to (re)write; missing parent directories are created.
      data: the whole new contents; ``str`` is encoded as UTF-8.

    Raises:
      OSError: the directory or file cannot be written; ``path`` is unchanged.
    """
    with atomic_writer(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
