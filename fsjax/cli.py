"""Command-line interface: ``fsjax run | allocate | compare | serve | client | launch``.

A thin shell over :func:`fsjax.config.load` and :func:`fsjax.simulation.run`:

    fsjax run experiments/quick.yaml --set rounds=3 --set selection.name=fair_select
    fsjax run --resume outputs/quick-20261123-101500
    fsjax allocate experiments/fairsynergy/agents_example.yaml
    fsjax compare --experiment quick --metrics accuracy_mean accuracy_jain

Bad arguments exit with code 2 and one line on stderr; a run that fails exits
with code 1 and one line (the MLflow run is marked FAILED).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

EXIT_USAGE = 2
EXIT_FAILED = 1
CHECKPOINT = "checkpoint.msgpack"


class UsageError(Exception):
    """Bad command-line arguments or config (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage too)
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fsjax", description="JAX-accelerated simulation of fair "
                     "federated learning.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="run an experiment from a YAML config")
    run.add_argument("config", nargs="?", help="experiment YAML (optional with --resume)")
    run.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="KEY=VALUE", help="override a config key (repeatable)")
    run.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or "
                     "sqlite:///mlruns.db)")
    run.add_argument("--experiment", help="MLflow experiment name (default: config name)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoint")
    run.add_argument("--output-dir", help="parent of the run directory (default: "
                     "config output_dir)")
    run.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bar or INFO logs")

    alloc = sub.add_parser("allocate", help="FairSynergy allocation for agents in a "
                           "JSON/YAML file")
    alloc.add_argument("file")
    alloc.add_argument("--alpha", type=float, default=None,
                       help="alpha-fairness (default: the file's, else 0)")
    alloc.add_argument("--plot", metavar="PNG", help="also draw allocation and price bars")

    cmp_ = sub.add_parser("compare", help="overlay the metric curves of several MLflow runs")
    cmp_.add_argument("--experiment", help="all runs of this MLflow experiment")
    cmp_.add_argument("--runs", nargs="*", default=[], metavar="RUN_ID")
    cmp_.add_argument("--metrics", nargs="+", default=["accuracy_mean", "accuracy_jain",
                                                       "participation_gini"])
    cmp_.add_argument("--tracking-uri")
    cmp_.add_argument("--out", default="compare.png", help="output PNG")

    serve = sub.add_parser("serve", help="run the Flask federated server")
    serve.add_argument("config")
    serve.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--tracking-uri")
    serve.add_argument("--experiment")
    serve.add_argument("--run-dir", help="run directory (checkpoint, CSVs); resumes if it "
                       "holds a checkpoint")
    serve.add_argument("--output-dir", help="parent of a new run directory when --run-dir "
                       "is not given (default: config output_dir)")
    serve.add_argument("--round-timeout", type=float, default=60.0, metavar="SECONDS",
                       help="how long a round waits for the selected clients (default 60)")
    serve.add_argument("--register-timeout", type=float, default=300.0, metavar="SECONDS",
                       help="how long to wait for all clients to register before round 1 "
                       "(default 300)")
    serve.add_argument("--linger", type=float, default=5.0, metavar="SECONDS",
                       help="keep answering after the run so clients learn it is done "
                       "(default 5)")
    serve.add_argument("--no-track", action="store_true")
    serve.add_argument("--quiet", "-q", action="store_true")

    client = sub.add_parser("client", help="run one federated client process")
    client.add_argument("config")
    client.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE")
    client.add_argument("--client-id", type=int, help="this client's index "
                        "(default $FSJAX_CLIENT_ID)")
    client.add_argument("--server", help="server URL, e.g. http://127.0.0.1:8080 "
                        "(default $FSJAX_SERVER_URL)")
    client.add_argument("--host", default="127.0.0.1")
    client.add_argument("--port", type=int, default=0, help="0 = a free port")
    client.add_argument("--url", help="URL the server reaches this client at (default "
                        "$FSJAX_CLIENT_URL, else http://HOST:PORT)")
    client.add_argument("--heartbeat", type=float, default=2.0, metavar="SECONDS",
                        help="seconds between status reports (default 2)")
    client.add_argument("--give-up-after", type=float, default=600.0, metavar="SECONDS",
                        help="exit when the server has been unreachable this long (default 600)")
    client.add_argument("--train-delay", type=float, default=0.0, metavar="SECONDS",
                        help="sleep before each local training (simulates a slow device)")
    client.add_argument("--quiet", "-q", action="store_true")

    launch = sub.add_parser("launch", help="server + N client processes on loopback")
    launch.add_argument("config")
    launch.add_argument("--clients", type=int, required=True)
    launch.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE")
    launch.add_argument("--tracking-uri")
    launch.add_argument("--experiment")
    launch.add_argument("--output-dir")
    launch.add_argument("--round-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="how long a round waits for the selected clients (default 60)")
    launch.add_argument("--no-track", action="store_true")
    launch.add_argument("--quiet", "-q", action="store_true")
    return parser


# ------------------------------------------------------------------------- run


def new_run_dir(parent: str | Path, name: str) -> Path:
    """``parent/<name>-<YYYYmmdd-HHMMSS>`` (suffixed if taken), created."""
    base = Path(parent) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    try:
        path.mkdir(parents=True)
    except OSError as err:
        raise ValueError(f"output dir {str(parent)!r} is not writable: {err.strerror}") from None
    return path


def resolve_run_config(args):
    """(config, run_dir, resuming) from ``run``'s arguments."""
    from fsjax import config

    if args.resume:
        run_dir = Path(args.resume)
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise UsageError(f"--resume {args.resume}: no config.yaml there (not a run dir)")
        cfg = config.load(saved, args.overrides)
        if args.config:
            given = config.load(args.config, args.overrides)
            if dataclasses.replace(given, rounds=cfg.rounds) != cfg:
                raise UsageError(f"--resume {args.resume}: {args.config} differs from the "
                                 "run's config.yaml (only rounds may change)")
        return cfg, run_dir, True
    if not args.config:
        raise UsageError("fsjax run: a CONFIG file is required (or --resume RUN_DIR)")
    cfg = config.load(args.config, args.overrides)
    return cfg, new_run_dir(args.output_dir or cfg.output_dir, cfg.name), False


def run_experiment(args, extra_callbacks=()):
    """Runs ``fsjax run``; returns the History. Raises UsageError/ValueError on bad input."""
    try:
        cfg, run_dir, resuming = resolve_run_config(args)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return run_in_dir(args, cfg, run_dir, resuming, extra_callbacks=extra_callbacks)


def run_in_dir(args, cfg, run_dir, resuming, *, make_sim=None, extra_callbacks=()):
    """The run wiring shared by ``fsjax run`` and ``fsjax serve``.

    Writes the config, builds the simulation (``make_sim(cfg)``, default
    :class:`fsjax.simulation.Simulation`; the networked server passes its own),
    restores the checkpoint when resuming, and runs it with the progress bar,
    CSV, checkpoint and MLflow callbacks. Uses ``args.no_track``,
    ``args.tracking_uri``, ``args.experiment`` and ``args.quiet``.
    """
    from fsjax import checkpoint, config, simulation, tracking

    if not args.no_track:
        tracking.check_tracking_uri(tracking.resolve_tracking_uri(args.tracking_uri))
    if not resuming:
        (run_dir / "config.yaml").write_text(config.dump(cfg))
    sim = (make_sim or simulation.Simulation)(cfg)
    if not args.quiet:
        print(sim.describe(), flush=True)
    state, history, test_acc = None, {}, {}
    if resuming:
        state, history, test_acc = checkpoint.load(run_dir / CHECKPOINT, sim.init())
        logging.getLogger("fsjax").info("resuming %s after round %d", run_dir, int(state.round))
    callbacks = [simulation.ProgressBar(disable=args.quiet),
                 tracking.CsvLogger(run_dir, history),
                 checkpoint.Checkpointer(run_dir / CHECKPOINT, cfg.checkpoint_every, history,
                                         test_acc)]
    tracker = None
    if not args.no_track:
        info = tracking.load_run_info(run_dir) if resuming else {}
        tracker = tracking.MlflowTracker(args.tracking_uri or info.get("tracking_uri"),
                                         args.experiment, run_dir, run_id=info.get("run_id"))
        callbacks.append(tracker)
    callbacks += list(extra_callbacks)
    hist = simulation.run(cfg, callbacks, state=state, history=history, sim=sim)
    hist.test_accuracy = {**test_acc, **hist.test_accuracy}
    if not args.quiet:
        print_summary(hist, run_dir, tracker.uri if tracker else None)
    return hist


def print_summary(hist, run_dir, tracking_uri) -> None:
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
        print(f"open the MLflow UI:  mlflow ui --backend-store-uri {tracking_uri}")


# ----------------------------------------------------------------- dispatch


def _compare(args) -> int:
    from fsjax import plots, tracking

    hists = tracking.fetch_histories(args.tracking_uri, args.runs, args.experiment, args.metrics)
    path = plots.plot_overlay(hists, args.metrics, args.out)
    for label, h in hists.items():
        last = ", ".join(f"{m}={h[m][-1]:.4f}" for m in args.metrics if h.get(m))
        print(f"{label}: {last}")
    print(f"wrote {path}")
    return 0


def _dispatch(args) -> int:
    if args.command == "run":
        run_experiment(args)
        return 0
    if args.command == "allocate":
        from fsjax import allocation_report
        return allocation_report.main(args.file, alpha=args.alpha, plot=args.plot)
    if args.command == "compare":
        return _compare(args)
    from serving import launch  # the networked commands live in serving/
    return launch.dispatch(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        quiet = getattr(args, "quiet", False)
        for name in ("fsjax", "serving"):
            logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)
        return _dispatch(args)
    except UsageError as err:
        print(f"fsjax: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fsjax: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:
        print(f"fsjax: error: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    # Run the importable fsjax.cli, not this __main__ copy: serving raises
    # fsjax.cli.UsageError, which main() must recognise (python -m fsjax.cli).
    from fsjax.cli import main as _main
    sys.exit(_main())
