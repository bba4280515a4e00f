"""Command-line interface: ``fsjax run | allocate | compare | serve | client | launch``.

A thin argparse shell: ``run`` over :mod:`fsjax.runs` (which wraps
:func:`fsjax.config.load` and :func:`fsjax.simulation.run`), ``allocate``
over the allocation report, ``compare`` over tracking and plots, and the
networked commands over :mod:`fsjax.serving.launch` (imported only for them,
and only once the ``serve`` extra is known to be installed):

    fsjax run experiments/quick.yaml --set rounds=3 --set selection.name=fair_select
    fsjax run --resume outputs/quick-20261123-101500
    fsjax allocate experiments/fairsynergy/agents_example.yaml
    fsjax compare --experiment quick --metrics accuracy_mean accuracy_jain
    fsjax launch experiments/quick.yaml --clients 4 --set rounds=2

``python -m fsjax`` and ``python -m fsjax.cli`` run the same :func:`main`.
Bad arguments exit with code 2 and one line on stderr; a run that fails (or a
missing optional extra) exits with code 1 and one line (the MLflow run is
marked FAILED).
"""

from __future__ import annotations

import argparse
import logging
import sys

from fsjax import extras, runs
# Re-exported: the names scripts used when the run wiring lived here.
from fsjax.runs import CHECKPOINT, UsageError, new_run_dir, print_summary  # noqa: F401

EXIT_USAGE = 2
EXIT_FAILED = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage too)
        raise UsageError(f"{self.prog}: {message}")


LOG_LEVELS = ("debug", "info", "warning", "error")


def port(text: str) -> int:
    """An argparse type: a TCP port in 1..65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1..65535)") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is out of range: expected 1..65535")
    return value


def port_or_zero(text: str) -> int:
    """An argparse type: 0 (a free port) or a TCP port in 1..65535."""
    return 0 if text.strip() == "0" else port(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fsjax", description="JAX-accelerated simulation of fair "
                     "federated learning.")
    from fsjax import __version__
    parser.add_argument("--version", action="version", version=f"fsjax {__version__}")
    parser.add_argument("--log-level", choices=LOG_LEVELS, type=str.lower,
                        help="log level of fsjax's messages (default info; warning with "
                        "--quiet); debug also prints tracebacks of failures")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="run an experiment from a YAML config")
    run.add_argument("config", nargs="?", help="experiment YAML (optional with --resume)")
    run.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="KEY=VALUE", help="override a config key (repeatable)")
    run.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or "
                     "sqlite:///mlruns.db)")
    run.add_argument("--experiment", help="MLflow experiment name (default: config name)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoint "
                     "(only rounds may change, e.g. --set rounds=20; a finished run is left as is)")
    run.add_argument("--output-dir", help="parent of the run directory (default: "
                     "config output_dir)")
    run.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bar or INFO logs")
    run.add_argument("--run-name", help="MLflow run name (default: the --set values, then "
                     "the config name)")
    run.add_argument("--distributed", action="store_true",
                     help="one of several processes (jax.distributed): the round's client "
                     "slots are split over every process's devices; process 0 writes the "
                     "outputs (README: Several machines)")
    run.add_argument("--coordinator", metavar="HOST:PORT", help="with --distributed: "
                     "process 0's coordinator address (default $FSJAX_COORDINATOR, else "
                     "detected from SLURM, Open MPI or Kubernetes)")
    run.add_argument("--num-processes", type=int, metavar="N", help="with --distributed: "
                     "processes in the run (default $FSJAX_NUM_PROCESSES, else detected)")
    run.add_argument("--process-id", type=int, metavar="I", help="with --distributed: this "
                     "process's index, 0..N-1 (default $FSJAX_PROCESS_ID, else detected)")

    alloc = sub.add_parser("allocate", help="FairSynergy allocation for agents in a "
                           "JSON/YAML file")
    alloc.add_argument("file", help="agents as JSON or YAML (budget, alpha, agents)")
    alloc.add_argument("--alpha", type=float, default=None,
                       help="alpha-fairness (default: the file's, else 0)")
    alloc.add_argument("--plot", metavar="PNG", help="also draw allocation and price bars")

    cmp_ = sub.add_parser("compare", help="overlay the metric curves of several runs "
                          "(MLflow runs or run directories) and tabulate their final values")
    cmp_.add_argument("--experiment", help="all runs of this MLflow experiment")
    cmp_.add_argument("--runs", nargs="*", default=[], metavar="RUN_ID",
                      help="MLflow run ids")
    cmp_.add_argument("--dirs", nargs="*", default=[], metavar="RUN_DIR",
                      help="run directories (their metrics_log.csv; for --no-track runs)")
    cmp_.add_argument("--metrics", nargs="+", default=["accuracy_mean", "accuracy_jain",
                                                       "participation_gini"],
                      metavar="METRIC", help="metrics to compare (default: accuracy_mean "
                      "accuracy_jain participation_gini)")
    cmp_.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or "
                      "sqlite:///mlruns.db); never created by compare")
    cmp_.add_argument("--out", default="compare.png", help="output PNG (default compare.png)")
    cmp_.add_argument("--csv", metavar="PATH", help="also write the final values as CSV")
    cmp_.add_argument("--md", metavar="PATH", help="also write the final values as a "
                      "markdown table")

    serve = sub.add_parser("serve", help="run the Flask federated server")
    serve.add_argument("config", help="experiment YAML")
    serve.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a config key (repeatable)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=port, default=8080, help="port, 1..65535 (default 8080)")
    serve.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or "
                       "sqlite:///mlruns.db)")
    serve.add_argument("--experiment", help="MLflow experiment name (default: config name)")
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
    serve.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    serve.add_argument("--quiet", "-q", action="store_true", help="no progress bar or INFO logs")

    client = sub.add_parser("client", help="run one federated client process")
    client.add_argument("config", help="experiment YAML (the server's)")
    client.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key (repeatable)")
    client.add_argument("--client-id", type=int, help="this client's index "
                        "(default $FSJAX_CLIENT_ID)")
    client.add_argument("--server", help="server URL, e.g. http://127.0.0.1:8080 "
                        "(default $FSJAX_SERVER_URL)")
    client.add_argument("--host", default="127.0.0.1", help="address to bind "
                        "(default 127.0.0.1)")
    client.add_argument("--port", type=port_or_zero, default=0,
                        help="port, 1..65535, or 0 for a free one (default 0)")
    client.add_argument("--url", help="URL the server reaches this client at (default "
                        "$FSJAX_CLIENT_URL, else http://HOST:PORT)")
    client.add_argument("--heartbeat", type=float, default=2.0, metavar="SECONDS",
                        help="seconds between status reports (default 2)")
    client.add_argument("--give-up-after", type=float, default=600.0, metavar="SECONDS",
                        help="exit when the server has been unreachable this long (default 600)")
    client.add_argument("--train-delay", type=float, default=0.0, metavar="SECONDS",
                        help="sleep before each local training (simulates a slow device)")
    client.add_argument("--quiet", "-q", action="store_true", help="INFO logs off")

    from fsjax import sweep  # noqa: PLC0415 - light: JAX loads only when a sweep trains
    sweep.add_parser(sub)

    launch = sub.add_parser("launch", help="server + N client processes on loopback")
    launch.add_argument("config", help="experiment YAML")
    launch.add_argument("--clients", type=int, required=True, help="client processes to start")
    launch.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key (repeatable)")
    launch.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI "
                        "or sqlite:///mlruns.db)")
    launch.add_argument("--experiment", help="MLflow experiment name (default: config name)")
    launch.add_argument("--output-dir", help="parent of the run directory (default: config "
                        "output_dir)")
    launch.add_argument("--round-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="how long a round waits for the selected clients (default 60)")
    launch.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    launch.add_argument("--quiet", "-q", action="store_true", help="no progress bar or INFO logs")

    serve.add_argument("--insecure", action="store_true",
                       help="start without FSJAX_TOKEN: anyone who reaches the server may "
                       "enrol clients (warns on every start)")
    for p in (serve, client, launch):
        p.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS "
                       "(or $FSJAX_TLS_CERT)")
        p.add_argument("--tls-key", help="PEM key of --tls-cert (or $FSJAX_TLS_KEY)")
        p.add_argument("--ca-bundle", help="CA bundle the peers' certificates must chain to "
                       "(or $FSJAX_CA_BUNDLE)")
    return parser


# ------------------------------------------------------------------------- run


def run_experiment(args, extra_callbacks=()):
    """Runs ``fsjax run`` from its parsed arguments; returns the History.

    With ``--distributed`` this process joins the others first
    (:func:`fsjax.distributed.initialize`); only process 0 creates the run
    directory and writes outputs (the others return their History too).

    Raises:
      UsageError: bad arguments or config (exit code 2).
    """
    distributed = getattr(args, "distributed", False)
    primary = True
    if distributed:
        primary = _join_processes(args)
    else:
        given = [flag for flag, name in (("--coordinator", "coordinator"),
                                         ("--num-processes", "num_processes"),
                                         ("--process-id", "process_id"))
                 if getattr(args, name, None) is not None]
        if given:
            raise UsageError(f"fsjax run: {', '.join(given)} only apply with --distributed")
    try:
        cfg, run_dir, resuming = runs.resolve_run_config(
            args.config, args.overrides, resume=args.resume, output_dir=args.output_dir,
            new_dir=primary)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return runs.run_in_dir(cfg, run_dir, resuming, tracking_uri=args.tracking_uri,
                           experiment=args.experiment, no_track=args.no_track,
                           quiet=args.quiet or not primary, extra_callbacks=extra_callbacks,
                           run_name=getattr(args, "run_name", None), overrides=args.overrides,
                           distributed=distributed)


def _join_processes(args) -> bool:
    """``--distributed``: jax.distributed.initialize; True in process 0."""
    from fsjax import distributed  # noqa: PLC0415 - imports JAX, only for --distributed

    try:
        distributed.settings(args.coordinator, args.num_processes, args.process_id)
    except ValueError as err:
        raise UsageError(str(err)) from None
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    primary = distributed.is_primary()
    if not primary:   # one process speaks: the others only warn
        logging.getLogger("fsjax").setLevel(max(logging.WARNING,
                                                logging.getLogger("fsjax").level))
    return primary


# ----------------------------------------------------------------- dispatch


def _compare(args) -> int:
    from fsjax import compare, plots

    hists = {}
    if args.runs or args.experiment or not args.dirs:
        hists.update(compare.from_mlflow(args.tracking_uri, args.runs, args.experiment,
                                         args.metrics))
    if args.dirs:
        hists.update(compare.from_dirs(args.dirs, args.metrics))
    compare.check_metrics(hists, args.metrics)
    path = plots.plot_overlay(hists, args.metrics, args.out)
    rows = compare.table_rows(hists, args.metrics)
    for row in rows[1:]:
        print(f"{row[0]}: " + ", ".join(f"{m}={v}" for m, v in zip(args.metrics, row[1:])))
    print(f"wrote {path}")
    for option, write in ((args.csv, compare.write_csv), (args.md, compare.write_markdown)):
        if option:
            write(option, rows)
            print(f"wrote {option}")
    return 0


def _dispatch(args) -> int:
    if args.command == "run":
        run_experiment(args)
        return 0
    if args.command == "allocate":
        from fsjax.allocation import report  # lazily, as each command imports its own parts
        return report.main(args.file, alpha=args.alpha, plot=args.plot)
    if args.command == "compare":
        return _compare(args)
    if args.command == "sweep":
        from fsjax import sweep
        return sweep.main(args)
    extras.require("serve", f"fsjax {args.command}")
    from fsjax.serving import launch  # the networked commands (repository folder serving/)
    return launch.dispatch(args)


def _one_line(err: BaseException) -> str:
    """An error message on one line (a YAML error, say, spans several)."""
    return " ".join(part.strip() for part in str(err).splitlines() if part.strip())


def main(argv: list[str] | None = None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        quiet = getattr(args, "quiet", False)
        level = (args.log_level or ("warning" if quiet else "info")).upper()
        logging.getLogger("fsjax").setLevel(level)
        return _dispatch(args)
    except UsageError as err:
        print(f"fsjax: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fsjax: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, extras.MissingExtra) as err:
        print(f"fsjax: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:  # noqa: BLE001 - any other failure: one line (debug: traceback)
        if logging.getLogger("fsjax").isEnabledFor(logging.DEBUG):
            logging.getLogger("fsjax").exception("fsjax failed")
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"fsjax: error: {type(err).__name__}: {first} (--log-level debug shows the "
              "traceback)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
