"""Run wiring: run directories, what a run starts from, and running it with the standard callbacks.

``fsjax run`` (:mod:`fsjax.cli`) and ``fsjax serve`` (:mod:`fsjax.serving.launch`)
both run an experiment this way, so both leave the same run directory
(``config.yaml``, ``metrics_log.csv``, ``final_metrics.csv``, the checkpoint)
and the same MLflow run:

- :func:`new_run_dir` makes ``PARENT/<name>-<YYYYmmdd-HHMMSS>``;
- :func:`resolve_run_config` gives ``(config, run_dir, resuming)`` for a new
  run or a ``--resume``;
- :func:`run_in_dir` writes the config, builds the simulation, restores the
  checkpoint when resuming and runs it with the progress bar, CSV,
  checkpoint and MLflow callbacks;
- :func:`print_summary` prints the final metrics and the MLflow runs-table link;
- :func:`default_run_name` and :func:`run_identity_tags` say what a run is
  (its ``--set`` values first; the command line and overrides as tags).

Bad input raises :class:`UsageError` (the CLI exits with code 2) or
``ValueError`` (exit code 1). Nothing here parses command lines.

Example:
  >>> import tempfile
  >>> with tempfile.TemporaryDirectory() as parent:
  ...     cfg, run_dir, resuming = resolve_run_config(
  ...         "experiments/quick.yaml", ["rounds=1"], output_dir=parent)
  ...     print(run_dir.parent == Path(parent), run_dir.name.startswith("quick-"), resuming)
  True True False
  >>> hist = run_in_dir(cfg, run_dir, no_track=True, quiet=True)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fsjax import config as config_lib, files

CHECKPOINT = "checkpoint.msgpack"

log = logging.getLogger(__name__)


class UsageError(Exception):
    """Bad arguments or config for a run (the command line exits with code 2)."""


def new_run_dir(parent: str | Path, name: str) -> Path:
    """Creates ``parent/<name>-<YYYYmmdd-HHMMSS>`` (suffixed ``-1``, ``-2``... if taken).

    Args:
      parent: the directory that holds run directories (created if missing).
      name: the experiment name.

    Returns:
      The new, empty directory.

    Raises:
      ValueError: ``parent`` is not writable.
    """
    base = Path(parent) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    try:
        path.mkdir(parents=True)
    except OSError as err:
        raise ValueError(f"output dir {str(parent)!r} is not writable: {err.strerror}") from None
    return path


def resolve_run_config(config_path: str | Path | None = None, overrides: Sequence[str] = (),
                       *, resume: str | Path | None = None,
                       output_dir: str | Path | None = None, new_dir: bool = True
                       ) -> tuple[config_lib.ExperimentConfig, Path | None, bool]:
    """What a run starts from: a config file, or the run directory it resumes.

    Args:
      config_path: the experiment YAML; optional with ``resume``, where it must
        equal the run's ``config.yaml`` except for ``rounds``.
      overrides: ``KEY=VALUE`` strings (``--set``).
      resume: a run directory to continue (its ``config.yaml`` wins).
      output_dir: parent of a new run directory (default: the config's
        ``output_dir``); unused when resuming.
      new_dir: create the new run directory; False gives ``run_dir`` None for
        a new run (the processes other than 0 of a ``--distributed`` run).

    Returns:
      ``(config, run_dir, resuming)``; a new ``run_dir`` is created (None
      with ``new_dir=False``).

    Raises:
      UsageError: no config, not a run directory, or a config that differs.
      ValueError: a bad config or override, an unwritable output dir.
    """
    if resume:
        run_dir = Path(resume)
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise UsageError(f"--resume {resume}: no config.yaml there (not a run dir)")
        from fsjax.resume import changed_keys
        cfg = config_lib.load(config_path or saved, overrides)
        changed = changed_keys(config_lib.load(saved), cfg)
        if changed:   # a resumed run must stay the run it was (fsjax.resume)
            raise UsageError(f"--resume {resume}: only rounds may change when resuming; "
                             f"changed: {'; '.join(changed)}")
        return cfg, run_dir, True
    if not config_path:
        raise UsageError("fsjax run: a CONFIG file is required (or --resume RUN_DIR)")
    cfg = config_lib.load(config_path, overrides)
    if not new_dir:
        return cfg, None, False
    return cfg, new_run_dir(output_dir or cfg.output_dir, cfg.name), False


def run_in_dir(cfg: config_lib.ExperimentConfig, run_dir: str | Path | None,
               resuming: bool = False,
               *, tracking_uri: str | None = None, experiment: str | None = None,
               no_track: bool = False, quiet: bool = False,
               make_sim: Callable[[config_lib.ExperimentConfig], Any] | None = None,
               extra_callbacks: Sequence[Any] = (), run_name: str | None = None,
               overrides: Sequence[str] = (), tags: dict[str, str] | None = None,
               description: str | None = None, distributed: bool = False):
    """Runs ``cfg`` in ``run_dir`` with the progress bar, CSV, checkpoint and MLflow callbacks.

    Args:
      cfg: the resolved config (see :func:`resolve_run_config`).
      run_dir: the run directory; ``config.yaml`` is written there unless resuming.
      resuming: continue from ``run_dir/checkpoint.msgpack`` (and the run's
        MLflow run, recorded in the run directory).
      tracking_uri: MLflow store (default ``$MLFLOW_TRACKING_URI`` or the
        resumed run's).
      experiment: MLflow experiment name (default: the config's name).
      no_track: no MLflow run (the CSV files are still written).
      quiet: no description, progress bar or summary.
      make_sim: builds the simulation from ``cfg`` (default
        :class:`fsjax.simulation.Simulation`; the networked server passes one
        with its remote backend).
      extra_callbacks: more run callbacks, called after the standard ones.
      run_name: the MLflow run name (default :func:`default_run_name`).
      overrides: the ``--set`` overrides the config was loaded with (in the
        default run name and the ``fsjax.overrides`` tag).
      tags: more MLflow run tags (a sweep passes ``mlflow.parentRunId``).
      description: the MLflow experiment's description when it has none.
      distributed: one of the processes of a ``--distributed`` run
        (:mod:`fsjax.distributed`, initialised already): the simulation's
        client slots span every process's devices, and only process 0 writes
        (``run_dir``, callbacks, MLflow, printing); the others step the same
        rounds with no callbacks (their ``run_dir`` may be None unless
        resuming, where they read its checkpoint: a shared file system).

    Returns:
      The run's :class:`fsjax.simulation.History` (``test_accuracy`` includes
      the rounds done before a resume); None when resuming a run that is
      already complete (it says so and changes nothing). A new run that fails
      before its first round leaves no run directory.
    """
    # Imported here: the simulation pulls in JAX, which `fsjax --help` should not wait for.
    from fsjax import callbacks, checkpoint, extras, simulation, tracking

    if distributed:
        from fsjax import distributed as distributed_lib
        if not distributed_lib.is_primary():
            return _run_secondary(cfg, run_dir, resuming, make_sim)
        make_sim = make_sim or distributed_lib.DistributedSimulation
    run_dir = Path(run_dir)
    if not no_track:
        extras.require("track", "MLflow tracking (off with --no-track)")
        tracking.check_tracking_uri(tracking.resolve_tracking_uri(tracking_uri))
    resume_tags = {}
    if resuming:   # fsjax.resume: a finished run stays as it is; a new `rounds` is recorded
        from fsjax import resume as resume_lib
        done = resume_lib.checkpoint_round(run_dir / CHECKPOINT)
        if done is not None and done >= cfg.rounds:
            print(f"{run_dir}: the run is complete ({done} of {cfg.rounds} rounds); "
                  "nothing to do (resume with --set rounds=N to run more)", flush=True)
            return None
        saved_rounds = config_lib.load(run_dir / "config.yaml").rounds
        if saved_rounds != cfg.rounds:
            resume_lib.record_rounds(run_dir, saved_rounds, cfg)
        if (counts := resume_lib.rounds_history(run_dir)):
            resume_tags["rounds_history"] = ",".join(str(n) for n in counts)
    else:
        files.atomic_write(run_dir / "config.yaml", config_lib.dump(cfg))
    try:
        sim = (make_sim or simulation.Simulation)(cfg)
    except BaseException:
        _drop_if_no_round(run_dir, resuming)
        raise
    if not quiet:
        print(sim.describe(), flush=True)
    state, history, test_acc = None, {}, {}
    if resuming:
        import jax
        state, history, test_acc = checkpoint.load(run_dir / CHECKPOINT, jax.eval_shape(sim.init))
        log.info("resuming %s after round %d", run_dir, int(state.round))
    from fsjax.outputs import RunOutputs
    cbs = [callbacks.ProgressBar(disable=quiet),
           tracking.CsvLogger(run_dir, history),
           checkpoint.Checkpointer(run_dir / CHECKPOINT, cfg.checkpoint_every, history,
                                   test_acc),
           RunOutputs(run_dir, history)]   # figures, clients.csv; before the tracker uploads
    tracker = None
    if not no_track:
        info = tracking.load_run_info(run_dir) if resuming else {}
        tracker = tracking.MlflowTracker(
            tracking_uri or info.get("tracking_uri"), experiment, run_dir,
            run_id=info.get("run_id"), run_name=run_name or default_run_name(cfg, overrides),
            tags={**run_identity_tags(overrides), **(tags or {}), **resume_tags},
            description=description)
        cbs.append(tracker)
    cbs += list(extra_callbacks)
    try:
        hist = simulation.run(cfg, cbs, state=state, history=history, sim=sim)
    except BaseException:
        _drop_if_no_round(run_dir, resuming)
        raise
    hist.test_accuracy = {**test_acc, **hist.test_accuracy}
    if not quiet:
        print_summary(hist, run_dir, tracker.uri if tracker else None,
                      experiment_id=tracker.experiment_id if tracker else None)
    return hist


def _run_secondary(cfg: config_lib.ExperimentConfig, run_dir: str | Path | None,
                   resuming: bool, make_sim: Callable | None):
    """A ``--distributed`` process other than 0: the same rounds, nothing written."""
    import jax

    from fsjax import checkpoint, distributed, simulation

    path = Path(run_dir) / CHECKPOINT if resuming else None
    if resuming:
        from fsjax import resume as resume_lib
        done = resume_lib.checkpoint_round(path)
        if done is not None and done >= cfg.rounds:   # process 0 does nothing either
            return None
    sim = (make_sim or distributed.DistributedSimulation)(cfg)
    state = history = None
    if resuming:
        state, history, _ = checkpoint.load(path, jax.eval_shape(sim.init))
    return simulation.run(cfg, (), state=state, history=history, sim=sim)


def _drop_if_no_round(run_dir: Path, resuming: bool) -> None:
    """A new run that failed before its first round leaves no directory behind.

    (Its MLflow run, when one was started, stays FAILED or KILLED with its error tag.)
    """
    from fsjax.tracking import METRICS_LOG

    # Only what the run itself wrote: never a directory holding anything else.
    ours = {"config.yaml", "run.json"}
    if (not resuming and run_dir.is_dir() and not (run_dir / METRICS_LOG).exists()
            and {p.name for p in run_dir.iterdir()} <= ours):
        for name in ours:
            (run_dir / name).unlink(missing_ok=True)
        run_dir.rmdir()
        log.info("removed %s: the run failed before its first round", run_dir)


def short_override(item: str) -> str:
    """``selection.name=cup`` -> ``selection=cup``, ``local.lr=0.05`` -> ``lr=0.05``.

    Example:
      >>> [short_override(o) for o in ("selection.name=cup", "local.lr=0.05", "rounds=3")]
      ['selection=cup', 'lr=0.05', 'rounds=3']
    """
    key, sep, value = item.partition("=")
    parts = key.strip().split(".")
    key = parts[-2] if len(parts) > 1 and parts[-1] == "name" else parts[-1]
    return f"{key}{sep}{value.strip()}"


def default_run_name(cfg: config_lib.ExperimentConfig, overrides: Sequence[str] = ()) -> str:
    """The differing values first: ``selection=fair_select lr=0.05 | quick``, else ``quick HH:MM:SS``.

    Example:
      >>> cfg = config_lib.load("experiments/quick.yaml")
      >>> default_run_name(cfg, ["selection.name=fair_select", "local.lr=0.05"])
      'selection=fair_select lr=0.05 | quick'
    """
    if overrides:
        return " ".join(short_override(o) for o in overrides) + f" | {cfg.name}"
    return f"{cfg.name} {time.strftime('%m-%d %H:%M:%S')}"


def run_identity_tags(overrides: Sequence[str] = (), argv: Sequence[str] | None = None
                      ) -> dict[str, str]:
    """The ``fsjax.command`` (the command line) and ``fsjax.overrides`` run tags."""
    import shlex
    import sys

    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).name in ("fsjax", "__main__.py", "cli.py"):
        argv[0] = "fsjax"
    return {"fsjax.command": shlex.join(argv)[:5000],
            "fsjax.overrides": " ".join(overrides)[:5000]}


def print_summary(hist, run_dir: str | Path, tracking_uri: str | None,
                  experiment_id: str | None = None) -> None:
    """Prints each metric's last finite value, the run directory and how to open MLflow.

    Args:
      hist: a :class:`fsjax.simulation.History`.
      run_dir: the run directory.
      tracking_uri: the MLflow store, or None when the run was not tracked.
      experiment_id: the MLflow experiment, for the direct link to its runs table.
    """
    from fsjax.tracking import ordered_columns

    names = [n for n in ordered_columns(hist.metrics) if n not in ("round_seconds",)]
    width = max(len(n) for n in names)
    print(f"\nfinal metrics after {len(hist.metrics['accuracy_mean'])} rounds "
          f"({hist.seconds:.1f} s):")
    for n in names:
        values = [v for v in hist.metrics[n] if v == v]
        print(f"  {n:<{width}}  {values[-1] if values else float('nan'):.4f}")
    print(f"\nrun directory: {run_dir}")
    if tracking_uri:
        from fsjax.tracking import ui_hint
        print(ui_hint(experiment_id, tracking_uri))
