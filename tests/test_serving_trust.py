"""The networked trust boundary: safe defaults, TLS, floods, poisoning, two hosts.

- the server refuses to start without a token unless told it is open, and says so;
- a client refuses to advertise a URL the server cannot reach;
- a real TLS handshake with a throwaway CA (trustme): the right CA is accepted,
  a wrong one refused; a whole networked run over HTTPS;
- 500 half-sent unauthenticated connections on loopback while /health answers
  and rounds complete;
- a client sending a 1e20 update through the server, with robust aggregation
  or the norm bound on;
- server and clients in two network namespaces (root only; skipped elsewhere).
(Impersonation attempts are in tests/test_serving_input.py.)
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsjax import cli, config, local, simulation, tracking
from fsjax.serving import auth, launch, server, web, wire
from fsjax.serving.httpserver import HttpServer
from tests.serving_helpers import wait_status

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "experiments" / "quick.yaml")
FSJAX = [sys.executable, "-m", "fsjax"]
TOKEN = "trust-test-token"


# ------------------------------------------------------------------ safe defaults


def test_server_refuses_to_start_without_a_token(monkeypatch, capsys):
    monkeypatch.delenv("FSJAX_TOKEN", raising=False)
    monkeypatch.delenv(launch.INSECURE_ENV, raising=False)
    assert cli.main(["serve", QUICK, "--port", "8080"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no FSJAX_TOKEN set" in err and "--insecure" in err and len(err.splitlines()) == 1


def test_open_mode_warns_on_every_start(capsys):
    for _ in range(2):
        launch.check_serve_security(None, True, "0.0.0.0", tls=False)
    err = capsys.readouterr().err
    assert err.count("WARNING: --insecure") == 2
    launch.check_serve_security("tok", False, "127.0.0.1", tls=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv, text", [
    (["--host", "0.0.0.0"], "no address the server can reach"),
    (["--url", "http://0.0.0.0:9000"], "wildcard"),
    (["--url", "http://localhost:9000"], "loopback but the server"),
    (["--url", "http://127.0.0.1:9000"], "loopback but the server"),
])
def test_client_refuses_an_unroutable_url(argv, text, monkeypatch, capsys):
    monkeypatch.delenv("FSJAX_CLIENT_URL", raising=False)
    code = cli.main(["client", QUICK, "--client-id", "0", "--server", "http://192.0.2.7:8080",
                     *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and text in err and len(err.splitlines()) == 1, err


def test_loopback_client_url_is_fine_for_a_loopback_server():
    web.check_advertised_url("http://127.0.0.1:9000", "http://localhost:8080")
    web.check_advertised_url("http://192.0.2.8:9000", "http://192.0.2.7:8080")


# ------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    trustme = pytest.importorskip("trustme")
    d = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(), trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"cert": d / "cert.pem", "key": d / "key.pem", "ca": d / "ca.pem",
             "wrong_ca": d / "wrong.pem"}
    cert.private_key_and_cert_chain_pem.write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    other.cert_pem.write_to_path(str(paths["wrong_ca"]))
    return {k: str(v) for k, v in paths.items()}


def _tiny_app():
    from flask import Flask, jsonify, request

    app = Flask("tiny")

    @app.post("/echo")
    def echo():
        return jsonify(n=len(request.get_data()), scheme=request.scheme)

    return app


def test_tls_handshake_with_the_right_ca_and_refusal_of_a_wrong_one(tls):
    srv = HttpServer(_tiny_app(), "127.0.0.1", 0, tls_cert=tls["cert"], tls_key=tls["key"])
    srv.start()
    try:
        url = f"https://127.0.0.1:{srv.effective_port}/echo"
        ok = json.loads(web.call("POST", url, body=b"x" * 1000,
                                 http=web.session(ca_bundle=tls["ca"])))
        assert ok == {"n": 1000, "scheme": "https"}
        with pytest.raises(web.Unavailable, match="(?i)certificate verify failed"):
            web.call("POST", url, body=b"x", http=web.session(ca_bundle=tls["wrong_ca"]))
        with pytest.raises(web.Unavailable):     # plain HTTP to the TLS port
            web.call("POST", url.replace("https", "http"), body=b"x", timeout=3)
    finally:
        srv.close()


def _run_dir_metrics(run_dir):
    return tracking.read_metrics_csv(Path(run_dir) / "metrics_log.csv")


@pytest.mark.processes
def test_networked_run_over_tls_equals_simulation(tls, tmp_path):
    env = dict(os.environ, FSJAX_TLS_CERT=tls["cert"], FSJAX_TLS_KEY=tls["key"],
               FSJAX_CA_BUNDLE=tls["ca"], FSJAX_TOKEN=TOKEN)
    out = subprocess.run([*FSJAX, "launch", QUICK, "--clients", "3", "--set", "rounds=2",
                          "--no-track", "--output-dir", str(tmp_path / "out"), "-q"],
                         cwd=REPO, capture_output=True, text=True, timeout=400, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "server https://127.0.0.1:" in out.stdout
    (run_dir,) = (tmp_path / "out").iterdir()
    log = _run_dir_metrics(run_dir)
    sim = simulation.run(config.load(QUICK, ("rounds=2", "partition.num_clients=3",
                                             "selection.clients_per_round=3")))
    np.testing.assert_allclose(log["accuracy_mean"], sim.metrics["accuracy_mean"], atol=1e-4)
    assert log["failed_updates"] == [0, 0]


# ----------------------------------------------------------------------- flood


def _start(*args, log, env):
    with open(log, "wb") as out:
        return subprocess.Popen([*FSJAX, *map(str, args)], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)


def _half_sent(port: int, n: int) -> list[socket.socket]:
    """``n`` loopback connections, each stopped mid-request: half a head, or a full
    head and half a body, with no credential."""
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 2:
            s.sendall(b"POST /update HTTP/1.1\r\nHost: x\r\nContent-Len")
        else:
            s.sendall(b"POST /register HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                      b"Content-Type: application/json\r\n\r\n{\"client_id\": ")
        socks.append(s)
    return socks


def _still_open(socks) -> int:
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            n += s.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


FLOOD = 500


@pytest.mark.processes
@pytest.mark.slow
def test_500_half_sent_connections_do_not_stop_health_or_rounds(tmp_path):
    port = launch.free_port()
    url = f"http://127.0.0.1:{port}"
    sets = ["--set", "rounds=100000", "--set", "partition.num_clients=3",
            "--set", "selection.clients_per_round=3"]
    env = dict(os.environ, FSJAX_TOKEN=TOKEN)
    procs, socks = [], []
    try:
        procs.append(_start("serve", QUICK, *sets, "--port", port, "--no-track", "--run-dir",
                            tmp_path / "run", "--linger", 0, "--round-timeout", 20, "-q",
                            log=tmp_path / "server.log", env=env))
        procs += [_start("client", QUICK, *sets, "--client-id", i, "--server", url,
                         "--heartbeat", 0.5, "-q", log=tmp_path / f"client{i}.log", env=env)
                  for i in range(3)]
        before = wait_status(url, lambda s: s["round"] >= 2, 300, procs)["round"]
        t0 = time.monotonic()
        socks = _half_sent(port, FLOOD)
        held = _still_open(socks)
        health = []
        for _ in range(5):
            try:
                health.append(json.loads(web.call("GET", f"{url}/health", timeout=5))["ok"])
            except (web.Unavailable, web.HttpError):
                health.append(False)
            time.sleep(0.5)
        after = wait_status(url, lambda s: s["round"] >= before + 2, 60, procs)["round"]
        held_after = _still_open(socks)
        seconds = time.monotonic() - t0
    finally:
        for s in socks:
            s.close()
        launch.terminate(procs, grace=10)
    print(f"flood: {FLOOD} half-sent connections, {held} open after sending, {held_after} "
          f"still open {seconds:.1f} s later; rounds {before} -> {after}; health {health}")
    assert held == FLOOD                # the server accepted every one of them
    assert health == [True] * 5
    assert after >= before + 2
    log = _run_dir_metrics(tmp_path / "run")
    assert sum(log["failed_updates"]) == 0


def test_slow_request_heads_and_bodies_are_cut_off():
    srv = HttpServer(_tiny_app(), "127.0.0.1", 0, header_timeout=0.5, body_timeout=0.5)
    srv.start()
    try:
        head = _half_sent(srv.effective_port, 2)
        time.sleep(1.5)
        answers = []
        for s in head:
            s.settimeout(2)
            try:
                answers.append(s.recv(200))
            except OSError as err:
                answers.append(repr(err).encode())
        assert answers[1] == b""                          # half a head: closed silently
        assert answers[0].startswith(b"HTTP/1.1 408")     # half a body: 408
        ok = json.loads(web.call("POST", f"http://127.0.0.1:{srv.effective_port}/echo",
                                 body=b"abc"))
        assert ok["n"] == 3
    finally:
        srv.close()


# ------------------------------------------------------------------- poisoning


def _networked_accuracy(cfg, attacker=None):
    """A networked run in process: real server code, clients as direct calls.

    Each selected client trains with the simulation's ``local_train`` on its
    shard and posts its signed update through ``submit_update``; ``attacker``
    posts every value 1e20 instead.
    """
    coord = server.Coordinator(cfg, token=TOKEN, round_timeout=60)
    sim = coord.sim
    secrets = {c: f"credential-{c}-{'x' * 20}" for c in range(sim.num_clients)}
    for c in range(sim.num_clients):
        coord.register({"client_id": c, "num_examples": int(coord._n[c]),
                        "label_histogram": coord._hist[c].tolist(),
                        "url": f"http://127.0.0.1:{9000 + c}", "secret": secrets[c]},
                       auth.enrolment_token(TOKEN, c))
    train = jax.jit(sim.local_train)

    def push(cid, job):
        params, _ = wire.decode_model(coord.model(), coord.template)
        shard = local.Shard(*(jnp.asarray(np.asarray(a)[cid])
                              for a in (sim.data.x, sim.data.y, sim.data.n)))
        out = jax.device_get(train(params, shard, jnp.int32(job["steps"]),
                                   jnp.asarray(job["key"], jnp.uint32)))
        delta = out.delta if cid != attacker else jax.tree.map(
            lambda a: np.full_like(a, 1e20), out.delta)
        upd = wire.Update(cid, job["round"], int(coord._n[cid]), float(out.loss),
                          float(out.loss0), int(out.steps), delta)
        try:
            coord.submit_update(wire.encode_update(upd), cid)
        except web.ApiError:            # refused (e.g. NaN after poisoning): no update comes
            with coord.cond:
                coord.current.unreachable.add(cid)
                coord.cond.notify_all()

    coord._push = push
    try:
        return simulation.run(cfg, sim=sim).metrics
    finally:
        coord.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("defence", [("aggregation.name=median",),
                                     ("aggregation.norm_bound=2.0",)])
def test_server_with_a_defence_survives_a_1e20_update(defence):
    cfg = config.load(QUICK, ("rounds=6", "partition.num_clients=5",
                              "selection.clients_per_round=5", *defence))
    honest = _networked_accuracy(cfg)["accuracy_mean"]
    sim = simulation.run(cfg).metrics["accuracy_mean"]
    np.testing.assert_allclose(honest, sim, atol=1e-4)      # the server is the simulation
    acc = _networked_accuracy(cfg, attacker=0)["accuracy_mean"]
    noise = float(np.max(np.abs(np.diff(honest[1:]))))
    assert np.all(np.isfinite(acc)) and abs(acc[-1] - honest[-1]) <= noise, (acc, honest)


@pytest.mark.slow
def test_server_without_a_defence_is_ruined_by_a_1e20_update():
    cfg = config.load(QUICK, ("rounds=6", "partition.num_clients=5",
                              "selection.clients_per_round=5"))
    honest = _networked_accuracy(cfg)["accuracy_mean"]
    acc = _networked_accuracy(cfg, attacker=0)["accuracy_mean"]
    assert abs(acc[-1] - honest[-1]) > float(np.max(np.abs(np.diff(honest[1:]))))


# ---------------------------------------------------------------- two hosts


def _netns_reason() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CI runs this test as root)"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    probe = f"fsjaxprobe{os.getpid()}"
    out = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if out.returncode != 0:
        return f"'ip netns add' failed here: {out.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@pytest.fixture
def two_hosts():
    """Two network namespaces joined by a veth pair: 10.213.7.1 (server), 10.213.7.2."""
    reason = _netns_reason()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:6]
    srv, cli_ns = f"fsjax-s-{tag}", f"fsjax-c-{tag}"
    cmds = [["ip", "netns", "add", srv], ["ip", "netns", "add", cli_ns],
            ["ip", "link", "add", f"fsv{tag}a", "type", "veth", "peer", "name", f"fsv{tag}b"],
            ["ip", "link", "set", f"fsv{tag}a", "netns", srv],
            ["ip", "link", "set", f"fsv{tag}b", "netns", cli_ns],
            ["ip", "-n", srv, "addr", "add", "10.213.7.1/24", "dev", f"fsv{tag}a"],
            ["ip", "-n", cli_ns, "addr", "add", "10.213.7.2/24", "dev", f"fsv{tag}b"],
            ["ip", "-n", srv, "link", "set", f"fsv{tag}a", "up"],
            ["ip", "-n", cli_ns, "link", "set", f"fsv{tag}b", "up"],
            ["ip", "-n", srv, "link", "set", "lo", "up"],
            ["ip", "-n", cli_ns, "link", "set", "lo", "up"]]
    try:
        for c in cmds:
            subprocess.run(c, check=True, capture_output=True)
        yield srv, cli_ns
    finally:
        for ns in (srv, cli_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.processes
@pytest.mark.netns
def test_server_and_clients_in_two_network_namespaces(two_hosts, tmp_path):
    srv_ns, cli_ns = two_hosts
    sets = ["--set", "rounds=2", "--set", "partition.num_clients=3",
            "--set", "selection.clients_per_round=3"]
    env = dict(os.environ, FSJAX_TOKEN=TOKEN)
    url = "http://10.213.7.1:8080"
    procs = []
    inside = lambda ns, *a: ["ip", "netns", "exec", ns, *FSJAX, *map(str, a)]
    try:
        with open(tmp_path / "server.log", "wb") as out:
            procs.append(subprocess.Popen(
                inside(srv_ns, "serve", QUICK, *sets, "--host", "10.213.7.1", "--port", 8080,
                       "--no-track", "--run-dir", tmp_path / "run", "--linger", 2, "-q"),
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env=env))
        for i in range(3):
            with open(tmp_path / f"client{i}.log", "wb") as out:
                procs.append(subprocess.Popen(
                    inside(cli_ns, "client", QUICK, *sets, "--client-id", i, "--server", url,
                           "--host", "10.213.7.2", "--port", 9000 + i, "-q"),
                    cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                    env=env))
        code = procs[0].wait(timeout=400)
        logs = "\n".join(p.read_text(errors="replace")[-2000:]
                         for p in sorted(tmp_path.glob("*.log")))
        assert code == 0, logs
    finally:
        launch.terminate(procs, grace=10)
    log = _run_dir_metrics(tmp_path / "run")
    sim = simulation.run(config.load(QUICK, ("rounds=2", "partition.num_clients=3",
                                             "selection.clients_per_round=3")))
    np.testing.assert_allclose(log["accuracy_mean"], sim.metrics["accuracy_mean"], atol=1e-4)
    assert log["failed_updates"] == [0, 0]
