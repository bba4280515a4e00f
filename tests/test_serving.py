"""The networked mode as real processes on loopback, and the docker files.

- ``fsjax launch`` equals ``fsjax run`` (same seed, no faults);
- a client killed mid-round is counted as failed and the run still finishes;
- a server killed mid-run resumes from its checkpoint;
- Ctrl-C on ``fsjax launch`` stops every process and marks the run KILLED;
- the docker files, read as text, name the commands and options these tests
  run (they are not built here), and the server image's health check works.
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from fsjax import cli, config, metrics, simulation, tracking
from fsjax.serving import launch
from tests.serving_helpers import wait_status

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "experiments" / "quick.yaml")
FSJAX = [sys.executable, "-m", "fsjax"]


def _start(*args, log: Path, env=None):
    """``python -m fsjax ARGS`` in its own process group, output to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen([*FSJAX, *map(str, args)], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=env or os.environ)


def _logs(tmp_path):
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                     for p in sorted(tmp_path.glob("*.log")))


def _mlflow(uri):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)


def _simulate(*overrides):
    return simulation.run(config.load(QUICK, overrides))


@pytest.mark.processes
def test_launch_equals_simulation(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    out = subprocess.run([*FSJAX, "launch", QUICK, "--clients", "4", "--set", "rounds=2",
                          "--tracking-uri", uri, "--output-dir", str(tmp_path / "out"), "-q"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    k = min(config.load(QUICK).selection.clients_per_round, 4)
    assert f"partition.num_clients=4 (config: 20), selection.clients_per_round={k}" in out.stdout

    client = _mlflow(uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "quick"]
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["engine_mode"] == "networked"
    for name in metrics.METRIC_NAMES + ("failed_updates", "round_seconds"):
        assert [m.step for m in client.get_metric_history(
            run.info.run_id, tracking.mlflow_key(name))] == [1, 2], name
    (run_dir,) = (tmp_path / "out").iterdir()
    assert tracking.read_metrics_csv(run_dir / "metrics_log.csv")["failed_updates"] == [0, 0]
    assert (run_dir / "final_metrics.csv").is_file() and (run_dir / "config.yaml").is_file()
    assert config.load(run_dir / "config.yaml").partition.num_clients == 4

    sim = _simulate("rounds=2", "partition.num_clients=4", f"selection.clients_per_round={k}")
    net = client.get_metric_history(run.info.run_id, "accuracy/accuracy_mean")[-1].value
    print(f"accuracy_mean: networked {net!r}, simulation {sim.metrics['accuracy_mean'][-1]!r}")
    assert abs(net - sim.metrics["accuracy_mean"][-1]) <= 1e-4
    net_test = client.get_metric_history(run.info.run_id, "accuracy/test_accuracy")
    assert [m.step for m in net_test] == [2]
    assert abs(net_test[0].value - sim.test_accuracy[2]) <= 1e-4


@pytest.mark.processes
def test_killed_client_counts_as_failed(tmp_path):
    port = launch.free_port()
    url = f"http://127.0.0.1:{port}"
    sets = ["--set", "rounds=2", "--set", "partition.num_clients=4",
            "--set", "selection.clients_per_round=3"]
    env = dict(os.environ, FSJAX_TOKEN="fault-test-token")
    run_dir = tmp_path / "run"
    timeout = 6.0
    procs = []
    try:
        server = _start("serve", QUICK, *sets, "--port", port, "--run-dir", run_dir,
                        "--no-track", "--round-timeout", timeout, "--linger", 0, "-q",
                        log=tmp_path / "server.log", env=env)
        procs.append(server)
        procs += [_start("client", QUICK, *sets, "--client-id", i, "--server", url,
                         "--train-delay", 1.5, "--heartbeat", 0.5, "-q",
                         log=tmp_path / f"client{i}.log", env=env) for i in range(4)]
        st = wait_status(url, lambda s: (s["open_round"] or {}).get("round") == 1, 120, procs)
        victim = st["open_round"]["selected"][0]
        assert victim not in st["open_round"]["received"]
        os.killpg(procs[1 + victim].pid, signal.SIGKILL)

        # The server image's HEALTHCHECK command, pointed at this server.
        probe = _healthcheck(REPO / "docker" / "Dockerfile.server")
        probe = [a.replace(":8080/", f":{port}/") for a in probe]
        assert subprocess.run(probe, timeout=30, env=env).returncode == 0

        assert server.wait(timeout=120) == 0, _logs(tmp_path)
    finally:
        launch.terminate(procs, grace=10)
    log = tracking.read_metrics_csv(run_dir / "metrics_log.csv")
    assert log["selected"] == [3, 3]
    assert log["failed_updates"][0] == 1, _logs(tmp_path)
    assert math.isfinite(log["train_loss"][0]) and log["dropped_updates"] == [0, 0]
    server_log = (tmp_path / "server.log").read_text()
    # Round 1 failed the dead client and used the others: after waiting for it until the
    # deadline, or at once when the kill cut the server's push to it short.
    assert (f"round 1: no update from clients [{victim}] by the deadline" in server_log
            or f"round 1: client {victim} unreachable" in server_log), _logs(tmp_path)
    # Round 2 did not wait for it: selected again, its push is refused and it fails at once.
    assert "round 2: no update from clients" not in server_log, _logs(tmp_path)
    assert log["failed_updates"][1] == (f"round 2: client {victim} unreachable" in server_log)


@pytest.mark.processes
def test_server_restart_resumes_from_checkpoint(tmp_path):
    port = launch.free_port()
    url = f"http://127.0.0.1:{port}"
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    overrides = ["rounds=4", "checkpoint_every=1", "partition.num_clients=3",
                 "selection.clients_per_round=2"]
    sets = [x for o in overrides for x in ("--set", o)]
    run_dir = tmp_path / "run"
    serve = ["serve", QUICK, *sets, "--port", port, "--run-dir", run_dir, "--tracking-uri", uri,
             "--linger", 0, "-q"]
    env = dict(os.environ, FSJAX_TOKEN="restart-test-token")
    procs = []
    try:
        procs.append(_start(*serve, log=tmp_path / "server1.log", env=env))
        procs += [_start("client", QUICK, *sets, "--client-id", i, "--server", url,
                         "--train-delay", 0.6, "--heartbeat", 0.3, "-q",
                         log=tmp_path / f"client{i}.log", env=env) for i in range(3)]
        wait_status(url, lambda s: s["round"] >= 3, 120, procs)
        os.killpg(procs[0].pid, signal.SIGKILL)          # a crash in the middle of round 3
        procs[0].wait(10)
        done = tracking.read_metrics_csv(run_dir / "metrics_log.csv")
        assert len(done["accuracy_mean"]) == 2, _logs(tmp_path)

        procs[0] = _start(*serve, log=tmp_path / "server2.log", env=env)
        assert procs[0].wait(timeout=120) == 0, _logs(tmp_path)
    finally:
        launch.terminate(procs, grace=10)
    log = tracking.read_metrics_csv(run_dir / "metrics_log.csv")
    assert len(log["accuracy_mean"]) == 4 and log["failed_updates"] == [0, 0, 0, 0]
    np.testing.assert_allclose(log["accuracy_mean"][:2], done["accuracy_mean"], rtol=0)
    run_id = tracking.load_run_info(run_dir)["run_id"]
    client = _mlflow(uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    sim = _simulate(*overrides)
    np.testing.assert_allclose(log["accuracy_mean"], sim.metrics["accuracy_mean"], atol=1e-4)
    np.testing.assert_allclose(log["participation_gini"], sim.metrics["participation_gini"],
                               atol=1e-6)


def _processes_mentioning(text):
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


@pytest.mark.processes
def test_launch_ctrl_c_stops_everything(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    out_dir = tmp_path / "out"
    with open(tmp_path / "launch.log", "wb") as log:
        proc = subprocess.Popen([*FSJAX, "launch", QUICK, "--clients", "2", "--set",
                                 "rounds=100000", "--tracking-uri", uri, "--output-dir",
                                 str(out_dir), "-q"], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None and time.monotonic() < deadline:
            m = re.search(r"server (http://127\.0\.0\.1:\d+)",
                          (tmp_path / "launch.log").read_text())
            url = m and m.group(1)
            time.sleep(0.1)
        wait_status(url, lambda s: s["round"] >= 2, 120, [proc])
        proc.send_signal(signal.SIGINT)                   # Ctrl-C
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert _processes_mentioning(str(out_dir)) == []      # server and clients are gone
    (run_dir,) = out_dir.iterdir()
    run_id = tracking.load_run_info(run_dir)["run_id"]
    assert _mlflow(uri).get_run(run_id).info.status == "KILLED"


# ----------------------------------------------------------------------- docker


def _instructions(path):
    """``[(INSTRUCTION, argument text)]`` of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _exec_form(text):
    argv = json.loads(text)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), text
    return argv


def _healthcheck(path):
    (hc,) = [rest for word, rest in _instructions(path) if word == "HEALTHCHECK"]
    return _exec_form(hc[hc.index("CMD") + 3:].strip())


@pytest.mark.parametrize("role, port, extras", [("server", 8080, "serve,track"),
                                                 ("client", 9000, "serve")])
def test_dockerfile_text_names_the_tested_commands(role, port, extras):
    """Parses the Dockerfile (no image is built here): base image, non-root user, the
    extras installed, and a CMD that parses as the ``fsjax`` subcommand the tests run."""
    path = REPO / "docker" / f"Dockerfile.{role}"
    ins = _instructions(path)
    words = [w for w, _ in ins]
    assert ins[0] == ("FROM", "python:3.11-slim")
    (user,) = [rest for w, rest in ins if w == "USER"]
    assert user not in ("root", "0") and words.index("USER") > words.index("RUN")
    assert any(w == "RUN" and f'pip install -c docker/constraints.txt ".[{extras}]"' in rest
               for w, rest in ins)
    assert "ENTRYPOINT" not in words
    (cmd,) = [_exec_form(rest) for w, rest in ins if w == "CMD"]
    # `fsjax` is the console script for fsjax.cli:main, what the tests run as
    # `python -m fsjax`; the arguments must parse as that subcommand.
    scripts = __import__("tomllib").loads((REPO / "pyproject.toml").read_text())
    assert scripts["project"]["scripts"]["fsjax"] == "fsjax.cli:main"
    assert cmd[:2] == ["fsjax", {"server": "serve", "client": "client"}[role]]
    args = cli.build_parser().parse_args(cmd[1:])
    assert args.command == cmd[1] and args.port == port and args.host == "0.0.0.0"
    assert (REPO / args.config).is_file()
    probe = _healthcheck(path)
    assert probe[:2] == ["python", "-c"] and "urllib" in probe[2]
    assert f"127.0.0.1:{port}/health" in probe[2]
    for copied in [rest.split()[0] for w, rest in ins if w == "COPY"]:
        assert (REPO / copied).exists(), copied


def test_compose_text_has_server_and_clients():
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    clients = {name: s for name, s in services.items() if name.startswith("client")}
    assert "server" in services and len(clients) >= 2
    parser = cli.build_parser()
    server = services["server"]
    assert server["build"]["dockerfile"] == "docker/Dockerfile.server"
    assert "FSJAX_TOKEN" in server["environment"]
    sargs = parser.parse_args(server["command"][1:])
    assert server["command"][0] == "fsjax" and sargs.command == "serve"
    ids = set()
    for name, svc in clients.items():
        env = svc["environment"]
        assert {"FSJAX_TOKEN", "FSJAX_SERVER_URL", "FSJAX_CLIENT_ID",
                "FSJAX_CLIENT_URL"} <= set(env)
        # Token and server URL come from the environment compose runs in.
        assert env["FSJAX_TOKEN"].startswith("${FSJAX_TOKEN")
        assert env["FSJAX_SERVER_URL"].startswith("${FSJAX_SERVER_URL")
        assert env["FSJAX_CLIENT_URL"] == f"http://{name}:9000"
        ids.add(int(env["FSJAX_CLIENT_ID"]))
        assert svc["build"]["dockerfile"] == "docker/Dockerfile.client"
        cargs = parser.parse_args(svc["command"][1:])
        assert svc["command"][0] == "fsjax" and cargs.command == "client"
        # Clients and server must build the same partition.
        assert cargs.config == sargs.config and cargs.overrides == sargs.overrides
        assert any(v.endswith(":/data:ro") and "shared/data" in v for v in svc["volumes"])
    assert ids == set(range(len(clients)))
    cfg = config.load(REPO / sargs.config, sargs.overrides)
    assert cfg.partition.num_clients == len(clients)
    assert any(v.endswith(":/data:ro") for v in server["volumes"])


def test_images_install_pinned_tested_versions():
    """docker/constraints.txt pins every package to the version installed here (tested)."""
    import importlib.metadata as md

    lines = [ln for ln in (REPO / "docker" / "constraints.txt").read_text().splitlines()
             if ln and not ln.startswith("#")]
    pins = dict(ln.split("==") for ln in lines)
    assert all(re.fullmatch(r"[a-z0-9-]+==[^=\s]+", ln) for ln in lines), lines
    for name in ("flask", "mlflow", "uvicorn", "a2wsgi", "requests", "jax", "flax"):
        assert pins[name] == md.version(name), name
    for role in ("server", "client"):
        ignore = (REPO / "docker" / f"Dockerfile.{role}.dockerignore").read_text()
        assert "!docker/constraints.txt" in ignore
    root = (REPO / ".dockerignore").read_text().splitlines()
    assert root[root.index("*") + 1:].count("!docker/constraints.txt") == 1


def test_compose_publishes_on_loopback_by_default():
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    (port,) = compose["services"]["server"]["ports"]
    assert port == "${FSJAX_PUBLISH:-127.0.0.1}:8080:8080"
    for name, svc in compose["services"].items():
        assert name == "server" or "ports" not in svc
    assert "down -v" in (REPO / "docker" / "compose.yaml").read_text()
