"""``fsjax sweep``: a grid of settings times seeds, resumable, with a summary over seeds.

    fsjax sweep experiments/quick.yaml --grid selection.name=random,fair_select \\
        --seeds 0-2 --set rounds=5 --workers 2
    fsjax sweep --from outputs/quick-sweep-1a2b3c4d          # redo the summary only

Every child (grid point x seed) is a normal fsjax run directory under
``OUT/runs/`` (``config.yaml``, the CSVs, the checkpoint, ``run.json``), run
with :func:`fsjax.runs.run_in_dir`, one after another or in ``--workers``
spawned processes. A child is finished when its ``sweep_done.json`` exists; a
re-run skips finished children, resumes a child whose directory holds a
checkpoint and restarts the others, so an interrupted sweep completes only
what is missing. ``OUT`` defaults to ``<output_dir>/<name>-sweep-<hash of the
settings>``, so the same command finds its own sweep again.

MLflow: one parent run for the sweep and one nested run per child (tag
``mlflow.parentRunId``), named by the values that differ between children
(``selection=fair_select seed=2``) and tagged with each grid key's value and
the seed. A SQLite store takes one writer at a time, so with several workers
the children log through a temporary ``mlflow server`` on a free loopback port
that owns the database for the sweep's duration.

At the end :mod:`fsjax.summary` writes ``summary.csv``, ``summary.md`` and a
figure per metric (mean and 95% CI band per grid point), logged to the parent.

Example:
  >>> axes = parse_grid(["selection.name=random,fair_select", "local.lr=0.1"])
  >>> [c.name for c in plan(axes, parse_seeds("0-1"))]   # doctest: +NORMALIZE_WHITESPACE
  ['selection=random seed=0', 'selection=random seed=1',
   'selection=fair_select seed=0', 'selection=fair_select seed=1']
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from fsjax import config as config_lib, files
from fsjax.runs import CHECKPOINT, UsageError, run_identity_tags, short_override
# The sweep directory's files and its summary (re-exported: the sweep's public names).
from fsjax.summary import DONE, SWEEP_FILE, load_children, write_summary  # noqa: F401

log = logging.getLogger(__name__)

DEFAULT_METRICS = ("accuracy_mean", "accuracy_jain", "participation_gini", "selection_gap")

Axis = tuple[str, dict[str, list[str]]]
"""A grid axis: ``(name, {value label: [override, ...]})``."""


class Child(NamedTuple):
    name: str                # the values that differ, e.g. "selection=cup seed=3"
    slug: str                # its run directory under OUT/runs
    point: dict[str, str]    # axis name -> value label
    seed: int
    overrides: tuple[str, ...]


def _split_values(text: str) -> list[str]:
    """Splits ``a,b,[1, 2],{x: 1}`` on the commas outside brackets and braces."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{("
        depth -= ch in "]})"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def parse_grid(items: Sequence[str]) -> list[Axis]:
    """``["key=v1,v2", ...]`` -> axes; their product is the grid.

    Raises:
      ValueError: an item without ``=``, an empty or repeated value, a repeated key.
    """
    axes: list[Axis] = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise ValueError(f"--grid {item!r}: expected key=v1,v2,... "
                             "e.g. selection.name=random,fair_select")
        values = _split_values(text)
        if "" in values or len(set(values)) != len(values):
            raise ValueError(f"--grid {item!r}: values must be non-empty and distinct")
        if key in (a[0] for a in axes):
            raise ValueError(f"--grid: key {key!r} given twice")
        axes.append((key, {v: [f"{key}={v}"] for v in values}))
    return axes


def parse_seeds(text: str | Sequence[int]) -> list[int]:
    """``"0-4"`` | ``"0,2,5"`` | ``"3"`` | a list of ints -> seeds.

    Example:
      >>> parse_seeds("0-2"), parse_seeds("1,5"), parse_seeds([7])
      ([0, 1, 2], [1, 5], [7])
    """
    if not isinstance(text, str):
        return [int(s) for s in text]
    seeds: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.replace(" ", ",").split(","))):
            lo, dash, hi = part.partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if dash else [int(part)]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected a range like 0-4 or a list like "
                         "0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: expected distinct seeds")
    return seeds


def _axis_label(name: str) -> str:
    return short_override(f"{name}=x")[:-2]


def summary_point_label(point: dict[str, str], axes: Sequence[Axis]) -> str:
    parts = [f"{_axis_label(n)}={point[n]}" for n, vals in axes if len(vals) > 1]
    return " ".join(parts) or "all"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_")[:120] or "run"


def plan(axes: Sequence[Axis], seeds: Sequence[int]) -> list[Child]:
    """Every (grid point, seed), named by the values that differ between children."""
    differ = [a for a in axes if len(a[1]) > 1]
    children = []
    for combo in itertools.product(*(list(vals.items()) for _, vals in axes)):
        point = {name: label for (name, _), (label, _) in zip(axes, combo)}
        overrides = tuple(o for _, ovs in combo for o in ovs)
        for seed in seeds:
            parts = [f"{_axis_label(n)}={point[n]}" for n, _ in differ]
            if len(seeds) > 1:
                parts.append(f"seed={seed}")
            name = " ".join(parts) or f"seed={seed}"
            children.append(Child(name, _slug(name.replace(" ", "-")), point, seed,
                                  (*overrides, f"seed={seed}")))
    return children


def point_label(child: Child, axes: Sequence[Axis]) -> str:
    """The grid point of a child without its seed (``"all"`` for a one-point grid)."""
    return summary_point_label(child.point, axes)


def parent_name(axes: Sequence[Axis], seeds: Sequence[int], name: str) -> str:
    """The parent run's name: the grid first (the runs table cuts long names).

    Example:
      >>> parent_name(parse_grid(["selection.name=random,cup"]), [0, 1, 2], "quick")
      'selection=random,cup seeds=0-2 | sweep quick'
    """
    grid = " ".join(f"{_axis_label(k)}={','.join(v)}" for k, v in axes if len(v) > 1)
    contiguous = list(seeds) == list(range(seeds[0], seeds[0] + len(seeds)))
    seed_text = f"{seeds[0]}-{seeds[-1]}" if contiguous and len(seeds) > 1 else \
        ",".join(map(str, seeds))
    return f"{grid} seeds={seed_text} | sweep {name}".strip()


def default_out(cfg: config_lib.ExperimentConfig, spec: dict) -> Path:
    key = json.dumps({k: spec[k] for k in ("config", "axes", "seeds", "overrides")},
                     sort_keys=True)
    return Path(cfg.output_dir) / f"{cfg.name}-sweep-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


# ------------------------------------------------------------------- children


def _run_child(job: dict) -> dict:
    """Runs (or resumes) one child in its run directory; in a worker or in-process."""
    from fsjax import runs

    run_dir = Path(job["run_dir"])
    # The config as the sweep resolved it, not re-read from run_dir/config.yaml:
    # relative paths in a config file are read relative to that file's folder.
    cfg = config_lib.from_dict(job["config"])
    t0 = time.perf_counter()
    runs.run_in_dir(cfg, run_dir, job["resume"], tracking_uri=job["tracking_uri"],
                    experiment=job["experiment"], no_track=job["no_track"], quiet=True,
                    run_name=job["name"], overrides=job["overrides"], tags=job["tags"],
                    description=job["description"])
    seconds = time.perf_counter() - t0
    files.atomic_write(run_dir / DONE, json.dumps(
        {"name": job["name"], "seconds": seconds, "rounds": cfg.rounds}, indent=2))
    return {"name": job["name"], "seconds": seconds}


def _child_state(run_dir: Path) -> str:
    if (run_dir / DONE).is_file():
        return "done"
    if (run_dir / CHECKPOINT).is_file() and (run_dir / "config.yaml").is_file():
        return "resume"
    return "new"


def _point_run_info_at(uri: str, run_dirs: Sequence[str | Path]) -> None:
    """Makes each child's ``run.json`` name the store, not the temporary server."""
    from fsjax import tracking

    for run_dir in run_dirs:
        path = Path(run_dir) / tracking.RUN_INFO
        if path.is_file():
            info = json.loads(path.read_text())
            info["tracking_uri"] = uri
            files.atomic_write(path, json.dumps(info, indent=2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(store_uri: str, timeout: float = 120.0):
    """Serves ``store_uri`` with ``mlflow server`` on a free loopback port; yields its URL.

    The server is the only writer of the database while it runs, so several
    worker processes can log at once without "database is locked".
    """
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    logf = open(Path(store_uri[len("sqlite:///"):]).parent / "mlflow-server.log", "ab") \
        if store_uri.startswith("sqlite:///") else subprocess.DEVNULL
    # The children's MLflow clients would print links to this temporary server.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             store_uri, "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], stdout=logf, stderr=subprocess.STDOUT,
                            start_new_session=True,   # its own process group, stopped as one
                            # No GenAI job runner: this server only takes the children's writes.
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ValueError(f"mlflow server for {store_uri} did not start "
                                     "(see mlflow-server.log beside the database)") from None
                time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        if logf is not subprocess.DEVNULL:
            logf.close()


def _run_jobs(jobs: list[dict], workers: int, say: Callable[[str], None]) -> list[str]:
    """Runs the jobs; returns the names of those that failed (each said in one line)."""
    failed, total = [], len(jobs)

    def report(i, job, result=None, error=None):
        if error is None:
            say(f"[{i}/{total}] done    {job['name']} ({result['seconds']:.0f} s)")
        else:
            failed.append(job["name"])
            say(f"[{i}/{total}] FAILED  {job['name']}: {type(error).__name__}: {error}")

    if workers <= 1:
        for i, job in enumerate(jobs, 1):
            say(f"[{i}/{total}] {'resume ' if job['resume'] else 'start  '} {job['name']}")
            try:
                report(i, job, _run_child(job))
            except (ValueError, OSError, RuntimeError) as err:
                report(i, job, error=err)
        return failed
    ctx = multiprocessing.get_context("spawn")   # JAX does not survive fork
    with futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        running = {}
        for job in jobs:
            say(f"[-/{total}] {'resume ' if job['resume'] else 'start  '} {job['name']}")
            running[pool.submit(_run_child, job)] = job
        for i, fut in enumerate(futures.as_completed(running), 1):
            try:
                report(i, running[fut], fut.result())
            except Exception as err:  # noqa: BLE001 - one failed child does not stop the rest
                report(i, running[fut], error=err)
    return failed


# ---------------------------------------------------------------------- sweep


def run_sweep(config: str | Path, axes: Sequence[Axis], seeds: Sequence[int], *,
              overrides: Sequence[str] = (), out: str | Path | None = None, workers: int = 1,
              tracking_uri: str | None = None, experiment: str | None = None,
              no_track: bool = False, metrics: Sequence[str] = DEFAULT_METRICS, last: int = 5,
              say: Callable[[str], None] = print) -> Path:
    """Runs every child that is not finished, then writes the summary; returns OUT.

    Args:
      config: the base experiment YAML.
      axes: the grid (:func:`parse_grid`, or named override lists per value).
      seeds: the seeds each grid point runs with.
      overrides: ``--set`` overrides for every child.
      out: the sweep directory (default :func:`default_out`).
      workers: processes running children at once.
      tracking_uri, experiment, no_track: MLflow, as for ``fsjax run``.
      metrics, last: what the summary reports (see :mod:`fsjax.summary`).
      say: prints progress lines.

    Raises:
      UsageError: a bad grid value or override (before anything runs).
      ValueError: children failed (after the others ran and the summary was written).
    """
    from fsjax import tracking

    if workers < 1:
        raise UsageError(f"--workers {workers}: expected >= 1")
    children = plan(axes, seeds)
    try:
        base = config_lib.load(config, overrides)
        configs = {c.slug: config_lib.load(config, (*overrides, *c.overrides))
                   for c in children}
    except ValueError as err:
        raise UsageError(str(err)) from None
    spec = {"config": str(Path(config).resolve()), "axes": [list(a) for a in axes],
            "seeds": list(seeds), "overrides": list(overrides), "metrics": list(metrics),
            "last": last, "experiment": experiment or base.name,
            "tracking_uri": None if no_track else tracking.resolve_tracking_uri(tracking_uri)}
    out = Path(out) if out else default_out(base, spec)
    old = json.loads((out / SWEEP_FILE).read_text()) if (out / SWEEP_FILE).is_file() else {}
    spec["parent_run_id"] = old.get("parent_run_id") if old.get("tracking_uri") == \
        spec["tracking_uri"] else None
    spec["children"] = [dict(c._asdict(), dir=f"runs/{c.slug}") for c in children]
    out.mkdir(parents=True, exist_ok=True)
    uri, exp_id = spec["tracking_uri"], None
    grid_text = " ".join(f"{k}={','.join(v)}" for k, v in axes)
    if uri:
        description = (tracking.default_description(spec["experiment"]) +
                       f"\n\nSweeps: `fsjax sweep {config} --grid ...`; open a sweep's parent "
                       "run to see its children and its summary.")
        spec["parent_run_id"], exp_id = tracking.start_parent_run(
            uri, spec["experiment"], parent_name(axes, seeds, base.name),
            spec["parent_run_id"], description=description,
            tags={"fsjax.sweep_dir": str(out.resolve()), **run_identity_tags(overrides)},
            params={**config_lib.flatten(base), "sweep.grid": grid_text,
                    "sweep.seeds": ",".join(map(str, seeds)), "sweep.workers": workers})
    files.atomic_write(out / SWEEP_FILE, json.dumps(spec, indent=2))
    say(f"sweep {out}: {len(children)} children ({len(children) // len(seeds)} grid points "
        f"x {len(seeds)} seeds), {workers} worker(s)")
    if uri:
        say(tracking.ui_hint(exp_id, uri))

    jobs, skipped = [], 0
    for c in children:
        run_dir = out / "runs" / c.slug
        state = _child_state(run_dir)
        if state == "done":
            skipped += 1
            continue
        if state == "new":
            info = tracking.load_run_info(run_dir)
            if uri and info.get("run_id"):   # an interrupted child without a checkpoint
                tracking.delete_run(uri, info["run_id"])
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            files.atomic_write(run_dir / "config.yaml", config_lib.dump(configs[c.slug]))
        jobs.append(dict(name=c.name, run_dir=str(run_dir), resume=state == "resume",
                         config=config_lib.to_dict(configs[c.slug]),
                         experiment=spec["experiment"], no_track=not uri,
                         overrides=[*overrides, *c.overrides], description=None,
                         tags={"mlflow.parentRunId": spec["parent_run_id"] or "",
                               "seed": str(c.seed), **{k: v for k, v in c.point.items()}}
                         if uri else {}, tracking_uri=uri))
    say(f"{skipped} finished, {sum(j['resume'] for j in jobs)} to resume, "
        f"{sum(not j['resume'] for j in jobs)} to start")
    failed: list[str] = []
    try:
        if jobs:
            if uri and uri.startswith("sqlite:///") and workers > 1 and len(jobs) > 1:
                try:
                    with mlflow_server(uri) as server:
                        for j in jobs:
                            j["tracking_uri"] = server
                        failed = _run_jobs(jobs, workers, say)
                finally:
                    _point_run_info_at(uri, [j["run_dir"] for j in jobs])
            else:
                failed = _run_jobs(jobs, workers, say)
    except BaseException:
        if uri:
            with contextlib.suppress(Exception):
                tracking.finish_parent_run(uri, spec["parent_run_id"], status="KILLED")
        raise
    write_summary(out, say=say, status="FAILED" if failed else "FINISHED")
    if failed:
        raise ValueError(f"sweep {out}: {len(failed)} of {len(children)} children failed "
                         f"({', '.join(failed)}); run the same command again to retry them")
    return out


# ------------------------------------------------------------------------ CLI


def add_parser(sub) -> None:
    """Adds ``fsjax sweep`` to the CLI's subparsers."""
    p = sub.add_parser("sweep", help="a grid of settings x seeds, with a summary over seeds")
    p.add_argument("config", nargs="?", help="experiment YAML (not with --from)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="values of one config key (repeatable; the grid is the product)")
    p.add_argument("--seeds", default="0", help="a range like 0-4 or a list like 0,1,2 "
                   "(default 0)")
    p.add_argument("--workers", type=int, default=1, help="children run at once (default 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a config key in every child")
    p.add_argument("--out", help="sweep directory (default <output_dir>/<name>-sweep-<hash>; "
                   "the same settings find the same directory)")
    p.add_argument("--metrics", nargs="+", default=None,
                   help=f"metrics in the summary (default {' '.join(DEFAULT_METRICS)})")
    p.add_argument("--last", type=int, default=None, help="rounds in the 'mean over the last "
                   "N rounds' column (default 5; with --from, the sweep's)")
    p.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or "
                   "sqlite:///mlruns.db)")
    p.add_argument("--experiment", help="MLflow experiment name (default: config name)")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--from", dest="from_dir", metavar="DIR",
                   help="redo the summary of the sweep in DIR without training")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")


def main(args) -> int:
    """Runs ``fsjax sweep`` from parsed arguments; returns the exit code."""
    if args.last is not None and args.last < 1:
        raise UsageError(f"--last {args.last}: expected >= 1")
    if args.from_dir:
        if args.config or args.grid:
            raise UsageError("--from DIR redoes a summary: give no CONFIG or --grid")
        if not (Path(args.from_dir) / SWEEP_FILE).is_file():
            raise UsageError(f"--from {args.from_dir}: no {SWEEP_FILE} there (not a sweep "
                             "directory)")
        write_summary(args.from_dir, metrics=args.metrics, last=args.last,
                      log_parent=not args.no_track)
        return 0
    if not args.config:
        raise UsageError("fsjax sweep: a CONFIG file is required (or --from DIR)")
    try:
        axes, seeds = parse_grid(args.grid), parse_seeds(args.seeds)
    except ValueError as err:
        raise UsageError(str(err)) from None
    say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    run_sweep(args.config, axes, seeds, overrides=args.overrides, out=args.out,
              workers=args.workers, tracking_uri=args.tracking_uri, experiment=args.experiment,
              no_track=args.no_track, metrics=args.metrics or DEFAULT_METRICS,
              last=args.last or 5, say=say)
    return 0
