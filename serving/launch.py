"""``fsjax serve | client | launch``: the networked commands, as processes.

- :func:`serve`: the server app (:mod:`fsjax.serving.server`) under uvicorn,
  the rounds in a background thread with the wiring of ``fsjax run``
  (:func:`fsjax.runs.run_in_dir`); SIGTERM/Ctrl-C stop it (MLflow: KILLED).
- :func:`run_client`: one client (:mod:`fsjax.serving.client`): build, compile,
  serve ``/train``, register, work until the run is done.
- :func:`launch`: a server and N clients on loopback.

``fsjax launch CONFIG --clients N`` runs an experiment as real processes on
loopback: it sets ``partition.num_clients=N`` (and clamps
``selection.clients_per_round`` to N), says so, makes the run directory under
``--output-dir`` or the config's ``output_dir``, and starts

- ``python -m fsjax serve CONFIG ... --run-dir RUN_DIR`` on a free port;
- N × ``python -m fsjax client CONFIG ... --client-id i --port 0``,

each in its own process group, with a shared random ``FSJAX_TOKEN`` unless
one is set. It waits for the server to finish the run (the run directory
and MLflow run are then the same as ``fsjax run``'s), terminates the clients
and returns the server's exit code. Ctrl-C (or SIGTERM) stops the server
first, so its MLflow run is marked KILLED, then the clients.

Each command takes the ``argparse.Namespace`` that :func:`fsjax.cli.build_parser`
makes; errors in the arguments raise :class:`fsjax.runs.UsageError`.

Example:
  $ fsjax launch experiments/quick.yaml --clients 4 --set rounds=2
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from fsjax import runs
from fsjax.serving import auth, web

log = logging.getLogger(__name__)


def dispatch(args) -> int:
    """Runs the ``serve``, ``client`` or ``launch`` command; returns the exit code."""
    # fsjax.serving.web logs each retry (INFO); urllib3's own WARNING per retry is noise.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    if args.command == "serve":
        return serve(args)
    if args.command == "client":
        return run_client(args)
    if args.command == "launch":
        return launch(args)
    raise runs.UsageError(f"unknown command {args.command!r}")


INSECURE_ENV = "FSJAX_INSECURE"
TLS_CERT_ENV, TLS_KEY_ENV = "FSJAX_TLS_CERT", "FSJAX_TLS_KEY"


def _option(args, name: str, env: str) -> str | None:
    """``--name`` (when the parser has it), else ``$env``, else None."""
    return getattr(args, name, None) or os.environ.get(env) or None


def tls_options(args) -> tuple[str | None, str | None, str | None]:
    """``(certificate, key, ca_bundle)`` from ``--tls-cert/--tls-key/--ca-bundle`` or
    ``$FSJAX_TLS_CERT``, ``$FSJAX_TLS_KEY``, ``$FSJAX_CA_BUNDLE``."""
    cert, key = _option(args, "tls_cert", TLS_CERT_ENV), _option(args, "tls_key", TLS_KEY_ENV)
    if bool(cert) != bool(key):
        raise runs.UsageError("TLS needs both --tls-cert and --tls-key (or FSJAX_TLS_CERT "
                              "and FSJAX_TLS_KEY)")
    for path in (cert, key, _option(args, "ca_bundle", web.CA_BUNDLE_ENV)):
        if path and not Path(path).is_file():
            raise runs.UsageError(f"TLS file {path!r} does not exist")
    return cert, key, _option(args, "ca_bundle", web.CA_BUNDLE_ENV)


def insecure(args) -> bool:
    """``--insecure`` or ``FSJAX_INSECURE=1``."""
    return bool(getattr(args, "insecure", False)) or os.environ.get(INSECURE_ENV) == "1"


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ fsjax launch


def launch_overrides(config_path: str, overrides, num_clients: int):
    """The overrides that make ``num_clients`` clients, the config, and a note saying so.

    Returns:
      ``(overrides, config, note)``; ``overrides`` are the given ones plus
      ``partition.num_clients`` and ``selection.clients_per_round``.
    """
    from fsjax import config

    if num_clients < 1:
        raise ValueError(f"--clients {num_clients}: expected at least 1")
    base = config.load(config_path, overrides)
    k = min(base.selection.clients_per_round, num_clients)
    extra = [f"partition.num_clients={num_clients}", f"selection.clients_per_round={k}"]
    cfg = config.load(config_path, [*overrides, *extra])
    note = (f"launch: partition.num_clients={num_clients} (config: "
            f"{base.partition.num_clients}), selection.clients_per_round={k} (config: "
            f"{base.selection.clients_per_round})")
    return [*overrides, *extra], cfg, note


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def terminate(procs, grace: float = 15.0) -> None:
    """SIGTERM each process group, wait up to ``grace`` s, then SIGKILL what is left."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in live:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.wait()


def launch(args) -> int:
    """``fsjax launch``: server + ``args.clients`` clients; returns the server's exit code."""
    from fsjax import extras, tracking

    try:
        overrides, cfg, note = launch_overrides(args.config, args.overrides, args.clients)
    except ValueError as err:
        raise runs.UsageError(str(err)) from None
    print(note, flush=True)
    if not args.no_track:
        extras.require("track", "MLflow tracking (off with --no-track)")
        tracking.check_tracking_uri(tracking.resolve_tracking_uri(args.tracking_uri))
    run_dir = runs.new_run_dir(args.output_dir or cfg.output_dir, cfg.name)
    token = web.resolve_token(None) or secrets.token_urlsafe(32)
    env = dict(os.environ, FSJAX_TOKEN=token)
    cert, key, ca_bundle = tls_options(args)
    for name, value in ((TLS_CERT_ENV, cert), (TLS_KEY_ENV, key),
                        (web.CA_BUNDLE_ENV, ca_bundle)):
        if value:
            env[name] = value      # the server and every client serve and verify alike
    port = free_port()
    scheme = "https" if cert else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    fsjax = [sys.executable, "-m", "fsjax"]
    sets = [x for o in overrides for x in ("--set", o)]
    server_cmd = [*fsjax, "serve", args.config, *sets, "--host", "127.0.0.1", "--port",
                  str(port), "--run-dir", str(run_dir), "--round-timeout",
                  str(args.round_timeout), "--linger", "0"]
    for flag, value in (("--tracking-uri", args.tracking_uri),
                        ("--experiment", args.experiment)):
        if value:
            server_cmd += [flag, value]
    server_cmd += ["--no-track"] * args.no_track + ["--quiet"] * args.quiet
    client_cmds = [[*fsjax, "client", args.config, *sets, "--client-id", str(i), "--server",
                    url, "--host", "127.0.0.1", "--port", "0", "--quiet"]
                   for i in range(args.clients)]
    print(f"launch: server {url}, {args.clients} clients, run directory {run_dir}", flush=True)
    procs: list[subprocess.Popen] = []
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        server = subprocess.Popen(server_cmd, env=env, start_new_session=True)
        procs.append(server)
        # Each client gets only its own enrolment token: it cannot enrol as another id.
        clients = [subprocess.Popen(c, env=dict(env, FSJAX_TOKEN=auth.enrolment_token(token, i)),
                                    start_new_session=True)
                   for i, c in enumerate(client_cmds)]
        procs += clients
        while server.poll() is None:
            if all(c.poll() not in (None, 0) for c in clients):
                print("launch: every client exited with an error; stopping the server",
                      file=sys.stderr, flush=True)
                terminate([server])
                return 1
            time.sleep(0.2)
        code = server.returncode
        if code == 0:
            print(f"launch: done; run directory {run_dir}", flush=True)
        return code
    except KeyboardInterrupt:
        print("launch: interrupted; stopping the server, then the clients", file=sys.stderr,
              flush=True)
        terminate(procs[:1], grace=30.0)   # the server first: its MLflow run is marked KILLED
        return 130
    finally:
        terminate(procs)
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------ fsjax serve


def resolve_serve_config(args):
    """``(config, run_dir, resuming)`` for ``fsjax serve``.

    ``--run-dir`` holding a checkpoint resumes it (its ``config.yaml`` wins;
    CONFIG must match it except for ``rounds``, as for ``fsjax run --resume``);
    a ``--run-dir`` without one starts a fresh run there; no ``--run-dir``
    makes a new one under ``--output-dir`` or the config's ``output_dir``.
    """
    from fsjax import config

    run_dir = Path(args.run_dir) if args.run_dir else None
    if run_dir is not None and (run_dir / runs.CHECKPOINT).is_file():
        return runs.resolve_run_config(args.config, args.overrides, resume=run_dir)
    cfg = config.load(args.config, args.overrides)
    if run_dir is None:
        return cfg, runs.new_run_dir(args.output_dir or cfg.output_dir, cfg.name), False
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--run-dir {str(run_dir)!r} is not writable: {err.strerror}") from None
    return cfg, run_dir, False


def check_serve_security(token: str | None, open_mode: bool, host: str,
                         tls: bool) -> None:
    """Refuses to serve without a token unless ``open_mode``; warns when open or plain."""
    if token is None and not open_mode:
        raise runs.UsageError(
            f"fsjax serve: no {web.TOKEN_ENV} set; set one (python -c \"import secrets; "
            f"print(secrets.token_urlsafe(32))\") or pass --insecure (or {INSECURE_ENV}=1) "
            "to let anyone who reaches the server enrol clients")
    if token is None:
        print(f"fsjax serve: WARNING: --insecure: no {web.TOKEN_ENV}; anyone who reaches "
              f"{host} can enrol as any client id not yet registered", file=sys.stderr,
              flush=True)
    if not tls and host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("serving plain HTTP on %s: use --tls-cert/--tls-key, or a TLS proxy, "
                    "off a private network", host)


def serve(args) -> int:
    """``fsjax serve``: the app over HTTP(S), the rounds in a background thread."""
    from fsjax.serving import server
    from fsjax.serving.httpserver import HttpServer

    try:
        cfg, run_dir, resuming = resolve_serve_config(args)
    except ValueError as err:
        raise runs.UsageError(str(err)) from None
    cert, key, ca_bundle = tls_options(args)
    check_serve_security(web.resolve_token(None), insecure(args), args.host, bool(cert))
    coord = server.Coordinator(cfg, round_timeout=args.round_timeout,
                               register_timeout=args.register_timeout, ca_bundle=ca_bundle)
    sim = coord.sim
    app = server.create_app(cfg, coord)
    # Enough threads for every client's heartbeat and update at once, within reason.
    threads = max(8, min(64, sim.num_clients + 4))
    http = HttpServer(app, args.host, args.port, threads=threads, tls_cert=cert,
                      tls_key=key, max_body=2 * coord.max_bytes)
    log.info("server for %d clients on %s://%s:%s (run dir %s%s)", sim.num_clients,
             http.scheme, args.host, http.effective_port, run_dir,
             ", resuming" if resuming else "")
    http.start()
    outcome: dict[str, BaseException] = {}
    finished = threading.Event()

    def rounds():
        try:
            runs.run_in_dir(cfg, run_dir, resuming, tracking_uri=args.tracking_uri,
                            experiment=args.experiment, no_track=args.no_track,
                            quiet=args.quiet, make_sim=lambda _: sim,
                            extra_callbacks=[coord.callback()])
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = err
            coord.callback().on_error(sim, err)
        finally:
            finished.set()

    # The main thread waits on an Event, not Thread.join: on CPython 3.11 a join
    # interrupted by a signal handler's exception reports the thread as finished,
    # and the process would exit before the run is marked KILLED.
    thread = threading.Thread(target=rounds, name="fsjax-rounds")
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        thread.start()
        while not finished.wait(0.2):
            pass
        if "error" in outcome:
            raise outcome["error"]
        try:
            time.sleep(max(0.0, args.linger))   # clients see done=true on their next report
        except KeyboardInterrupt:
            pass                                # the run is complete: still a success
    except KeyboardInterrupt:
        coord.stop()
        finished.wait(30)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        http.close()
        coord.shutdown()
    return 0


# ------------------------------------------------------------------ fsjax client


def advertised_url(args, scheme: str, port: int, server_url: str) -> str:
    """The URL the server will push to: ``--url``/``$FSJAX_CLIENT_URL``, else
    ``scheme://HOST:port``; a UsageError when the server could not reach it."""
    url = args.url or os.environ.get("FSJAX_CLIENT_URL")
    if not url and args.host in ("0.0.0.0", "::", ""):
        raise runs.UsageError(f"fsjax client: --host {args.host or '(all)'} listens on every "
                              "interface but is no address the server can reach; give --url "
                              f"{scheme}://<this machine's address>:PORT (or FSJAX_CLIENT_URL)")
    url = (url or f"{scheme}://{args.host}:{port}").rstrip("/")
    try:
        web.check_advertised_url(url, server_url)
    except ValueError as err:
        raise runs.UsageError(f"fsjax client: {err}") from None
    return url


def run_client(args) -> int:
    """``fsjax client``: build, compile, serve, register, then work until done."""
    from fsjax import config
    from fsjax.serving.client import Client, create_app
    from fsjax.serving.httpserver import HttpServer

    cid = args.client_id
    if cid is None:
        env = os.environ.get("FSJAX_CLIENT_ID", "")
        if not env.strip().isdigit():
            raise runs.UsageError("fsjax client: --client-id (or FSJAX_CLIENT_ID) is required")
        cid = int(env)
    server_url = args.server or os.environ.get("FSJAX_SERVER_URL")
    if not server_url:
        raise runs.UsageError("fsjax client: --server (or FSJAX_SERVER_URL) is required")
    try:
        cfg = config.load(args.config, args.overrides)
    except ValueError as err:
        raise runs.UsageError(str(err)) from None
    cert, key, ca_bundle = tls_options(args)
    scheme = "https" if cert else "http"
    advertised_url(args, scheme, args.port or 1, server_url)   # refuse before building
    client = Client(cfg, cid, server_url, heartbeat=args.heartbeat,
                    give_up_after=args.give_up_after, train_delay=args.train_delay,
                    ca_bundle=ca_bundle)
    client.warm_up()
    http = HttpServer(create_app(cfg, client), args.host, args.port, threads=4,
                      tls_cert=cert, tls_key=key, max_body=web.JSON_MAX_BYTES)
    client.url = advertised_url(args, scheme, http.effective_port, server_url)
    threads = [threading.Thread(target=http.run, name="fsjax-http", daemon=True),
               threading.Thread(target=client.worker, name="fsjax-train", daemon=True)]
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for t in threads:
            t.start()
        client.register()
        beat = threading.Thread(target=client.heartbeat_loop, name="fsjax-status", daemon=True)
        beat.start()
        while not client.stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass                        # terminated: a clean exit
    except web.Unavailable as err:
        log.error("client %d: server unreachable, giving up: %s", cid, err)
        client.exit_code = 1
    except web.HttpError as err:
        log.error("client %d: registration refused: %s", cid, err)
        client.exit_code = 1
    finally:
        client.stop.set()
        signal.signal(signal.SIGTERM, previous)
        http.close()
    return client.exit_code


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")

