"""What the FairSynergy experiment scripts share: paths, output folder, CSV.

* ``data_path``: ``--data`` > ``$FSJAX_SHARED/data/...`` > ``../shared/data/...``
  (relative to the repository root).
* ``SCENARIOS``: the study's seven two-agent table scenarios, one ``fsjax allocate``
  file each in ``scenarios/``.

The sweep's random systems (``fsjax.allocation.instances``) and the study's cvxpy
path (``fsjax.allocation.reference``) live in the library, where
``bench/allocation.py`` uses them too.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
CONFIGS = "fairsynergy-dl-configs.json"
DEFAULT_OUT = REPO / "experiments" / "fairsynergy" / "out"
SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
# The study's table notebook, in its order; inputs in scenarios/<name>.yaml.
SCENARIOS = ("hand", "moreResource", "oneAccHigher", "bothAccHigher", "oneHardHigher", "bothHardHigher",
             "saturated")


def scenario_path(name) -> Path:
    """The ``fsjax allocate`` file of one table scenario."""
    return SCENARIO_DIR / f"{name}.yaml"


def data_path(arg=None) -> Path:
    """The 86-config file: ``--data``, else ``$FSJAX_SHARED/data``, else ``../shared/data``."""
    if arg:
        path = Path(arg)
    elif os.environ.get("FSJAX_SHARED"):
        path = Path(os.environ["FSJAX_SHARED"]) / "data" / CONFIGS
    else:
        path = REPO.parent / "shared" / "data" / CONFIGS
    if not path.is_file():
        raise SystemExit(f"data file not found: {path} (pass --data FILE or set FSJAX_SHARED to the shared dir)")
    return path


def parser(description, data=False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output directory for CSV and PNG (default: %(default)s)")
    if data:
        p.add_argument("--data", default=None,
                       help=f"path to {CONFIGS} (default: $FSJAX_SHARED/data or ../shared/data)")
    return p


def out_dir(arg) -> Path:
    path = Path(arg)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
