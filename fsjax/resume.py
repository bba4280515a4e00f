"""Resume rules: a resumed run is the run it was, except for its number of rounds.

- :func:`changed_keys` lists the config keys that differ between the run's
  ``config.yaml`` and what a resume asks for; any key but ``rounds`` makes
  the resume an error (:func:`fsjax.runs.resolve_run_config`).
- :func:`record_rounds` records a ``rounds`` change: ``config.yaml`` is
  rewritten with the new count and ``rounds_history.json`` keeps every count
  the run has had (``[10, 15]``), which the MLflow run carries as the tag
  ``rounds_history`` (``"10,15"``).
- :func:`checkpoint_round` reads the round a checkpoint was taken after
  without building the simulation, so a finished run is recognised at once.

Example:
  >>> from fsjax import config
  >>> a = config.load("experiments/quick.yaml")
  >>> b = config.load("experiments/quick.yaml", ("rounds=15", "local.lr=0.05"))
  >>> changed_keys(a, b)
  ['local.lr: 0.1 -> 0.05']
"""

from __future__ import annotations

import json
from pathlib import Path

from fsjax import config as config_lib, files

ROUNDS_HISTORY = "rounds_history.json"
MAY_CHANGE = ("rounds",)


def changed_keys(saved: config_lib.ExperimentConfig, new: config_lib.ExperimentConfig
                 ) -> list[str]:
    """``"key: old -> new"`` for every flattened config key that differs, except ``rounds``."""
    old, cur = config_lib.flatten(saved), config_lib.flatten(new)
    missing = object()
    out = []
    for key in sorted(set(old) | set(cur)):
        a, b = old.get(key, missing), cur.get(key, missing)
        if key not in MAY_CHANGE and a != b:
            show = lambda v: "(unset)" if v is missing else v  # noqa: E731
            out.append(f"{key}: {show(a)} -> {show(b)}")
    return out


def rounds_history(run_dir: str | Path) -> list[int]:
    """The round counts a run has had (empty when it was never resumed with a new count)."""
    path = Path(run_dir) / ROUNDS_HISTORY
    return json.loads(path.read_text()) if path.is_file() else []


def record_rounds(run_dir: str | Path, old: int, cfg: config_lib.ExperimentConfig) -> list[int]:
    """Records a change of ``rounds`` from ``old`` to ``cfg.rounds``; returns the history.

    ``config.yaml`` is rewritten with the new count (so it stays the run's full
    config) and ``rounds_history.json`` gains the new count.
    """
    run_dir = Path(run_dir)
    history = rounds_history(run_dir) or [old]
    if history[-1] != cfg.rounds:
        history.append(cfg.rounds)
    files.atomic_write(run_dir / "config.yaml", config_lib.dump(cfg))
    files.atomic_write(run_dir / ROUNDS_HISTORY, json.dumps(history))
    return history


def checkpoint_round(path: str | Path) -> int | None:
    """The round a checkpoint was written after, or None when it cannot be read."""
    from flax import serialization

    try:
        raw = serialization.msgpack_restore(Path(path).read_bytes())
        return int(raw["state"]["round"])
    except Exception:  # noqa: BLE001 - checkpoint.load reports a bad file properly
        return None
