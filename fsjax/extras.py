"""Optional dependencies: which pip extra brings which module, and a clear error without it.

``pip install fsjax`` installs the simulation core only. MLflow tracking,
the networked mode and the tensorflow-datasets loader need an extra
(``pip install 'fsjax[track]'``, ``[serve]``, ``[tfds]``, or ``[all]``).
Code that needs one calls :func:`require` first, so a missing extra is one
line naming it instead of a traceback from deep inside an import.

Example:
  >>> require("serve", "fsjax serve")      # flask, uvicorn, a2wsgi and requests import
  >>> EXTRAS["track"]
  ('mlflow',)
"""

from __future__ import annotations

import importlib

# extra -> the modules it provides (import names, as in pyproject.toml's extras).
EXTRAS: dict[str, tuple[str, ...]] = {
    "track": ("mlflow",),
    "serve": ("flask", "uvicorn", "a2wsgi", "requests"),
    "tfds": ("tensorflow_datasets",),
}


class MissingExtra(ImportError):
    """A feature's optional dependency is not installed; the message says which extra."""


def require(extra: str, what: str) -> None:
    """Imports every module of ``extra``, or raises :class:`MissingExtra` naming it.

    Args:
      extra: a key of :data:`EXTRAS` (``"track"``, ``"serve"`` or ``"tfds"``).
      what: the feature that needs it, e.g. ``"fsjax serve"``; starts the message.

    Raises:
      MissingExtra: e.g. ``fsjax serve needs the 'serve' extra: pip install
        'fsjax[serve]'`` (the missing module is the exception's ``__cause__``).
      KeyError: an unknown ``extra``.
    """
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            raise MissingExtra(f"{what} needs the {extra!r} extra: pip install "
                               f"'fsjax[{extra}]'", name=err.name) from err
