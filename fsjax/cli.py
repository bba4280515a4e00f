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

    Raises:
      UsageError: bad arguments or config (exit code 2).
    """
    try:
        cfg, run_dir, resuming = runs.resolve_run_config(
            args.config, args.overrides, resume=args.resume, output_dir=args.output_dir)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return runs.run_in_dir(cfg, run_dir, resuming, tracking_uri=args.tracking_uri,
                           experiment=args.experiment, no_track=args.no_track,
                           quiet=args.quiet, extra_callbacks=extra_callbacks)


# ----------------------------------------------------------------- dispatch


def _compare(args) -> int:
    extras.require("track", "fsjax compare")
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
        from fsjax.allocation import report  # lazily, as each command imports its own parts
        return report.main(args.file, alpha=args.alpha, plot=args.plot)
    if args.command == "compare":
        return _compare(args)
    extras.require("serve", f"fsjax {args.command}")
    from fsjax.serving import launch  # the networked commands (repository folder serving/)
    return launch.dispatch(args)


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
        logging.getLogger("fsjax").setLevel(logging.WARNING if quiet else logging.INFO)
        return _dispatch(args)
    except UsageError as err:
        print(f"fsjax: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fsjax: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, extras.MissingExtra) as err:
        print(f"fsjax: error: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
