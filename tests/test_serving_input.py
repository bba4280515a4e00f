"""Bad input against the server and client apps, in-process (Flask test clients),
and bad arguments to the networked commands.

Every bad request must get a 4xx JSON error naming the problem, leave the
global model and the round's updates unchanged, and leave ``/health`` at 200.
"""

import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import msgpack
import numpy as np
import pytest
from flax import serialization

from fsjax import cli, config
from fsjax.serving import auth, client as client_lib, launch, server, web, wire

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "experiments" / "quick.yaml")
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
C = 4
WRITE_ENDPOINTS = ("/register", "/status", "/update")
SECRETS = {cid: f"credential-of-client-{cid}-0123456789" for cid in range(C + 100)}


def _sig(cid, method, path, data=b"", secret=None):
    """Headers signing a request as client ``cid`` (with its credential unless ``secret``)."""
    return auth.signed_headers(cid, secret or SECRETS[cid], method, path, data)


def _post_json(http, path, body, cid=0, headers=None):
    """POST ``body`` as JSON signed by client ``cid`` (or with ``headers`` instead)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(path, data=data, content_type="application/json",
                     headers=_sig(cid, "POST", path, data) if headers is None else headers)


@pytest.fixture(scope="module")
def cfg():
    return config.load(QUICK, (f"partition.num_clients={C}", "selection.clients_per_round=2"))


@pytest.fixture(scope="module")
def setup(cfg):
    """A server app with clients 0-2 registered and round 1 open for clients 0 and 1."""
    coord = server.Coordinator(cfg, token=TOKEN)
    sim = coord.sim
    app = server.create_app(cfg, coord)
    http = app.test_client()
    for cid in range(3):
        r = http.post("/register", json=_registration(coord, cid), headers=AUTH)
        assert r.status_code == 200, r.json
    params = jax.device_get(sim.init().params)
    coord.open_round(1, params, selected={0: 0, 1: 1}, steps={0: 5, 1: 5})
    return coord, http, params


def _registration(coord, cid, **change):
    body = {"client_id": cid, "num_examples": int(coord._n[cid % C]),
            "label_histogram": coord._hist[cid % C].tolist(),
            "url": f"http://127.0.0.1:{9000 + cid}", "secret": SECRETS[cid % len(SECRETS)]}
    body.update(change)
    return body


def _delta(coord, fill=0.01):
    return jax.tree.map(lambda a: np.full(a.shape, fill, a.dtype), coord.template)


def _update(coord, cid=0, **change):
    fields = dict(client_id=cid, round=1, num_examples=int(coord._n[cid % C]), loss=2.0, loss0=2.3,
                  steps=5, delta=_delta(coord))
    fields.update(change)
    return wire.Update(**fields)


def _raw_update(coord, cid=0, delta_state=None, drop=None, **change):
    """An update body built by hand (so it can break what encode_update would not)."""
    body = _update(coord, cid)._asdict()
    body["delta"] = wire.encode_tree(body["delta"]) if delta_state is None else delta_state
    body.update(change)
    body.pop(drop, None)
    return serialization.msgpack_serialize(body)


def _leaf_path(state):
    path = []
    while isinstance(state, dict):
        k = sorted(state)[0]
        path.append(k)
        state = state[k]
    return path


def _with_leaf(coord, value_fn):
    state = wire.encode_tree(_delta(coord))
    path = _leaf_path(state)
    node = state
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value_fn(node[path[-1]])
    return state


def _snapshot(coord, http):
    model = http.get("/model", headers=_sig(0, "GET", "/model"))
    assert model.status_code == 200
    return model.data, dict(coord.current.received)


def _assert_rejected(resp, text=None, codes=range(400, 500)):
    assert resp.status_code in codes, (resp.status_code, resp.data[:300])
    body = resp.get_json(silent=True)
    assert isinstance(body, dict) and isinstance(body.get("error"), str), resp.data[:300]
    if text is not None:
        assert text.lower() in body["error"].lower(), body["error"]
    return body["error"]


def test_each_kind_of_bad_request_is_a_named_4xx(setup):
    coord, http, _ = setup
    before = _snapshot(coord, http)
    def post_update(data, cid=0, headers=None):
        return http.post("/update", data=data, content_type=web.MSGPACK,
                         headers=_sig(cid, "POST", "/update", data) if headers is None
                         else headers)

    def update_of(cid, signer=None, **change):
        data = wire.encode_update(_update(coord, cid=cid, **change))
        return post_update(data, cid if signer is None else signer)

    enrol_2 = {"Authorization": f"Bearer {auth.enrolment_token(TOKEN, 2)}"}
    status_0 = {"client_id": 0, "available": True}
    nan_state = _with_leaf(coord, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0,
                                                     np.nan, a).astype(a.dtype))
    cases = [
        # the update body
        (post_update(b"\xc1\xc1 not msgpack"), 400, "malformed msgpack"),
        (post_update(b""), 400, "empty"),
        (post_update(msgpack.packb([1, 2, 3])), 400, "expected a msgpack map"),
        (post_update(_raw_update(coord, drop="loss0")), 400, "missing ['loss0']"),
        (post_update(_raw_update(coord, delta_state={"params": {}})), 422, "missing"),
        (post_update(_raw_update(coord, delta_state={**wire.encode_tree(_delta(coord)),
                                                     "extra": np.zeros(2, np.float32)})),
         422, "unexpected ['extra']"),
        (post_update(_raw_update(coord, delta_state=_with_leaf(coord, lambda a: a.T.copy()
                                                               if a.ndim == 2 else
                                                               np.zeros(a.size + 1, a.dtype)))),
         422, "shape"),
        (post_update(_raw_update(coord, delta_state=_with_leaf(coord,
                                                               lambda a: a.astype(np.float64)))),
         422, "dtype float64"),
        (post_update(_raw_update(coord, delta_state=_with_leaf(coord,
                                                               lambda a: a.astype(np.int32)))),
         422, "dtype int32"),
        (post_update(_raw_update(coord, delta_state=_with_leaf(coord, lambda a: 3)
                                 )), 422, "expected a float32 array"),
        (post_update(_raw_update(coord, delta_state=nan_state)), 422, "non-finite"),
        (post_update(_raw_update(coord, delta_state=_with_leaf(coord, lambda a: np.full_like(
            a, np.inf)))), 422, "non-finite"),
        (post_update(_raw_update(coord, loss=float("nan"))), 422, "finite"),
        (post_update(_raw_update(coord, loss="2.0")), 400, "expected a number"),
        (post_update(_raw_update(coord, client_id=True)), 400, "expected an integer"),
        (post_update(b"\x00" * (coord.max_bytes + 1)), 413, None),
        # who sends it, and for which round
        (update_of(99), 404, "client 99 is not registered"),
        (update_of(3), 404, "not registered"),
        (update_of(2), 403, "not selected"),
        (update_of(0, round=0), 409, "stale"),
        (update_of(0, round=2), 409, "future"),
        (update_of(0, num_examples=1), 422, "num_examples"),
        (update_of(0, steps=6), 422, "steps=6"),
        # credentials: the shared token is not a client's credential
        (post_update(wire.encode_update(_update(coord)), headers={}), 401, "missing"),
        (post_update(wire.encode_update(_update(coord)), headers=AUTH), 401, "missing"),
        (post_update(wire.encode_update(_update(coord)), headers={
            **AUTH, auth.CLIENT_HEADER: "0", auth.SIGNATURE_HEADER: "0" * 64}), 403,
         "wrong signature"),
        (post_update(wire.encode_update(_update(coord)), headers={
            auth.CLIENT_HEADER: "zero", auth.SIGNATURE_HEADER: "x"}), 400, "expected a client id"),
        # client 1 speaking for client 0: its own signature, 0's id in the body ...
        (update_of(0, signer=1), 403, "speaks for client 0"),
        # ... or 0's id in the header, signed with 1's credential
        (post_update(d := wire.encode_update(_update(coord)), headers=_sig(
            0, "POST", "/update", d, secret=SECRETS[1])), 403, "wrong signature"),
        (http.get("/model"), 401, "missing"),
        (http.get("/model", headers=AUTH), 401, "missing"),
        (http.get("/model", headers=_sig(1, "GET", "/model", secret=SECRETS[0])), 403,
         "wrong signature"),
        (http.post("/register", json=_registration(coord, 3)), 401, "missing"),
        (http.post("/register", json=_registration(coord, 3),
                   headers={"Authorization": "Bearer wrong"}), 403, "wrong enrolment token"),
        (http.post("/register", json=_registration(coord, 3), headers=enrol_2), 403,
         "wrong enrolment token"),
        (_post_json(http, "/status", status_0, headers={"Authorization": "Bearer nope"}), 401,
         "missing"),
        (_post_json(http, "/status", status_0, cid=2), 403, "speaks for client 0"),
        # registration: taking over a registered id needs its credential
        (http.post("/register", json=_registration(coord, 0, url="http://10.0.0.9:1",
                                                   secret="a-guess-at-the-credential"),
                   headers=AUTH), 403, "already registered"),
        (http.post("/register", json=_registration(coord, 0, secret=SECRETS[1]),
                   headers=AUTH), 403, "already registered"),
        (http.post("/register", json={k: v for k, v in _registration(coord, 3).items()
                                      if k != "secret"}, headers=AUTH), 400, "secret"),
        (http.post("/register", json=_registration(coord, 3, secret="short"), headers=AUTH),
         400, "secret"),
        (http.post("/register", json=_registration(coord, 3, url="http://0.0.0.0:9"),
                   headers=AUTH), 422, "wildcard"),
        (http.post("/register", json=_registration(coord, 4), headers=AUTH), 404,
         "unknown client id 4"),
        (http.post("/register", json=_registration(coord, -1), headers=AUTH), 404, "unknown"),
        (http.post("/register", json=_registration(coord, 3, num_examples=1), headers=AUTH),
         422, "partition"),
        (http.post("/register", json=_registration(coord, 3, label_histogram=[1, 2]),
                   headers=AUTH), 400, "label_histogram"),
        (http.post("/register", json=_registration(coord, 3, label_histogram=[10 ** 400] * 10),
                   headers=AUTH), 400, "label_histogram"),
        (http.post("/register", json=_registration(coord, 3, url="ftp://x"), headers=AUTH),
         400, "url"),
        (http.post("/register", json={**_registration(coord, 3), "admin": True}, headers=AUTH),
         400, "unexpected field"),
        (http.post("/register", json={"client_id": 3}, headers=AUTH), 400, "missing field"),
        (http.post("/register", data=b"{not json", headers=AUTH), 400, "not valid JSON"),
        (http.post("/register", json=[1, 2], headers=AUTH), 400, "expected a JSON object"),
        (http.post("/register", data=b"[" * 100000 + b"]" * 100000, headers=AUTH), 400, None),
        (http.post("/register", data=b" " * (web.JSON_MAX_BYTES + 1), headers=AUTH), 413, None),
        # status reports
        (_post_json(http, "/status", {"client_id": 3, "available": True}, cid=3), 404,
         "not registered"),
        (_post_json(http, "/status", {"client_id": 7, "available": True}, cid=0), 404,
         "unknown"),
        (_post_json(http, "/status", {"client_id": 0, "available": "yes"}), 400, "available"),
        (_post_json(http, "/status", b'{"client_id": 0, "available": true, "latency": NaN}'),
         400, "latency"),
        (_post_json(http, "/status", {"client_id": 0, "available": True, "latency": -1}), 400,
         "latency"),
        # wrong method or path
        (http.get("/update"), 405, None),
        (http.post("/nowhere", headers=AUTH), 404, None),
    ]
    for i, (resp, code, text) in enumerate(cases):
        assert resp.status_code == code, (i, code, resp.status_code, resp.data[:300])
        _assert_rejected(resp, text)
    assert _snapshot(coord, http) == before
    assert coord.clients[0].url == "http://127.0.0.1:9000" and 3 not in coord.clients
    assert http.get("/health").status_code == 200
    # /status shows client URLs only to the token holder.
    assert "url" not in json.dumps(http.get("/status").json["registered"])
    assert "9000" not in http.get("/status").get_data(as_text=True)
    assert http.get("/status", headers=AUTH).json["registered"]["0"]["url"] == \
        "http://127.0.0.1:9000"
    assert SECRETS[0] not in http.get("/status", headers=AUTH).get_data(as_text=True)


def test_a_client_moves_with_its_credential_and_enrols_with_its_own_token(cfg):
    coord = server.Coordinator(cfg, token=TOKEN)
    http = server.create_app(cfg, coord).test_client()
    mine = {"Authorization": f"Bearer {auth.enrolment_token(TOKEN, 1)}"}
    assert http.post("/register", json=_registration(coord, 1), headers=mine).status_code == 200
    # A retry of the same registration (its answer lost) is accepted: same credential.
    assert http.post("/register", json=_registration(coord, 1), headers=mine).status_code == 200
    moved = _registration(coord, 1, url="http://10.1.2.3:7000")
    assert http.post("/register", json=moved).status_code == 200   # the credential suffices
    assert coord.clients[1].url == "http://10.1.2.3:7000"
    # Client 1's enrolment token does not enrol client 2.
    assert http.post("/register", json=_registration(coord, 2), headers=mine).status_code == 403
    assert sorted(coord.clients) == [1]


FIELDS = {"/register": ("client_id", "num_examples", "label_histogram", "url", "secret"),
          "/status": ("client_id", "available", "latency"),
          "/update": wire.UPDATE_FIELDS,
          "/train": ("round", "steps", "key", "client_id")}


def _values(coord, field, rng, path):
    """(values that may be valid, values that are never valid) for ``field`` at ``path``."""
    big = 2 ** 63   # the largest msgpack carries, far past any id, round or count
    ok = {"client_id": [0, 1, 2], "available": [True, False], "latency": [0.0, 1.5],
          "num_examples": [int(coord._n[0])], "label_histogram": [coord._hist[0].tolist()],
          "url": ["http://127.0.0.1:9000"], "round": [1], "steps": [0, 5],
          "secret": [SECRETS[0], SECRETS[3]],
          "loss": [2.0], "loss0": [0.5], "key": [[1, 2]],
          "delta": [wire.encode_tree(_delta(coord))]}[field]
    junk = [None, "x", [], {}, 1.5, True, -1, big, float("nan"), "\u0000" * 3]
    bad = {"client_id": [4, -1, big, "0", 1.0, None, True, [0]],
           "available": [1, 0, "true", None, [True]],
           "latency": [-1.0, float("nan"), float("inf"), "1", [1.0], True],
           "num_examples": [-1, "7", 1.5, None, True],
           "label_histogram": [[1] * 3, [], "x", [None] * 10, [True] * 10, [big] * 10],
           "url": ["ftp://x", "", 5, "http://a b", "http://" + "a" * 3000, None],
           "secret": ["short", 5, None, "x" * 300, [SECRETS[0]], "\ud800" * 20, "é" * 20],
           "round": [0, -1, "1", 1.5, None, True] + ([] if path == "/train" else [2, big]),
           "steps": [-1, "5", None, 1.5, 10 ** 7] + ([] if path == "/train" else [6]),
           "loss": [float("nan"), float("inf"), "2", None, True],
           "loss0": [float("-inf"), "0", None, [0.5]],
           "key": [[1], [1, 2, 3], [-1, 0], [0, 2 ** 32], ["a", "b"], None, [True, False]],
           "delta": [None, 3, "x", {}, {"params": {}}, _random_tree(rng),
                     _broken_leaf(coord, rng)]}[field]
    return ok, junk, bad


def _random_tree(rng, depth=0):
    if depth > 2 or rng.random() < 0.3:
        dtype = rng.choice(["<f4", "<f8", "<i4", "|u1", "<f2"])
        shape = tuple(int(v) for v in rng.integers(0, 5, int(rng.integers(0, 3))))
        return np.asarray(rng.normal(size=shape) * 10).astype(dtype)
    return {str(rng.integers(100)): _random_tree(rng, depth + 1)
            for _ in range(int(rng.integers(1, 4)))}


def _broken_leaf(coord, rng):
    breaks = [lambda a: a.astype(np.float64), lambda a: a.reshape(-1)[:-1].copy(),
              lambda a: np.full_like(a, np.nan), lambda a: a.astype(np.float16),
              lambda a: a[None], lambda a: 1.0, lambda a: np.full_like(a, -np.inf)]
    return _with_leaf(coord, breaks[int(rng.integers(len(breaks)))])


def _structured(coord, path, rng):
    """A body shaped like the real thing with at least one field that can never be valid."""
    fields = FIELDS[path]
    body = {}
    for f in fields:
        if rng.random() < 0.95:   # mostly plausible values, so parsing gets deep
            ok, junk, _ = _values(coord, f, rng, path)
            pool = ok if rng.random() < 0.85 else junk
            body[f] = pool[int(rng.integers(len(pool)))]
    poison = rng.choice([*fields, "<extra>"])
    if poison == "<extra>":
        body["admin" + str(rng.integers(10))] = True
    else:
        bad = _values(coord, poison, rng, path)[2]
        body[poison] = bad[int(rng.integers(len(bad)))]
    if path == "/update":
        return serialization.msgpack_serialize(body)
    return json.dumps(body).encode()


def _garbage(rng, n, coord=None, path=None):
    """Seeded junk: random bytes (some behind JSON or msgpack prefixes) and, with
    ``coord`` and ``path``, well-formed bodies holding at least one invalid field."""
    prefixes = [b"", b"", b'{"client_id": ', b'{"client_id": 0, "round": 1, ', b"\x87",
                b"\x87\xa9client_id\x00", b"\xde\x00\x07", b"\x92\xc7"]
    for i in range(n):
        if coord is not None and i % 2:
            yield _structured(coord, path, rng)
            continue
        size = int(rng.integers(0, 2048)) if i % 10 else int(rng.integers(0, 64))
        yield prefixes[i % len(prefixes)] + rng.bytes(size)


@pytest.mark.slow
def test_garbage_bodies_on_every_write_endpoint(setup, cfg):
    coord, http, _ = setup
    before = _snapshot(coord, http)
    rng = np.random.default_rng(1234)
    for path in WRITE_ENDPOINTS:
        for i, body in enumerate(_garbage(rng, 1000, coord, path)):
            ctype = web.MSGPACK if path == "/update" else "application/json"
            headers = AUTH if path == "/register" else _sig(0, "POST", path, body)
            resp = http.post(path, data=body, headers=headers, content_type=ctype)
            assert 400 <= resp.status_code < 500, (path, i, body[:60], resp.data[:200])
            assert "error" in resp.get_json(), (path, i)
    assert _snapshot(coord, http) == before
    assert sorted(coord.clients) == [0, 1, 2]
    assert http.get("/health").status_code == 200

    # The client's only write endpoint, POST /train: only the server, which holds the
    # client's credential, can sign a push.
    cl = client_lib.Client(cfg, 1, "http://127.0.0.1:9", token=TOKEN, secret=SECRETS[1])
    capp = client_lib.create_app(cfg, cl).test_client()
    for i, body in enumerate(_garbage(rng, 1000, coord, "/train")):
        resp = _post_json(capp, "/train", body, cid=1)
        assert 400 <= resp.status_code < 500, (i, body[:60], resp.data[:200])
    job = {"round": 1, "steps": 5, "key": [1, 2]}
    signed = lambda cid, secret: (lambda d: _sig(cid, "POST", "/train", d, secret))
    bad_jobs = [(job, lambda d: {}, 401), (job, lambda d: AUTH, 401),
                (job, signed(1, SECRETS[0]), 403),          # signed with another credential
                (job, signed(0, SECRETS[0]), 403),          # a push meant for client 0
                ({"round": 0, "steps": 5, "key": [1, 2]}, None, 400),
                ({"round": 1, "steps": -1, "key": [1, 2]}, None, 400),
                ({"round": 1, "steps": 5, "key": [1, 2 ** 32]}, None, 400),
                ({"round": 1, "steps": 5, "key": [1]}, None, 400),
                ({"round": 1, "steps": 5, "key": [1, 2], "client_id": 2}, None, 409),
                ({"round": 1, "steps": 5, "key": [1, 2], "x": 1}, None, 400)]
    for body, make_headers, code in bad_jobs:
        data = json.dumps(body).encode()
        resp = _post_json(capp, "/train", data, cid=1,
                          headers=None if make_headers is None else make_headers(data))
        assert resp.status_code == code, (body, resp.status_code, resp.json)
        assert "error" in resp.json
    assert cl.jobs.empty() and capp.get("/health").status_code == 200
    ok = _post_json(capp, "/train", {"round": 3, "steps": 5, "key": [1, 2], "client_id": 1},
                    cid=1)
    assert ok.status_code == 202 and cl.jobs.get_nowait() == client_lib.TrainJob(3, 5, (1, 2))


def test_good_update_then_duplicate_then_closed_round(setup):
    coord, http, params = setup
    model = http.get("/model", headers=_sig(0, "GET", "/model"))
    got, r = wire.decode_model(model.data, coord.template)
    assert r == 1
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    body = wire.encode_update(_update(coord, cid=0))
    ok = http.post("/update", data=body, headers=_sig(0, "POST", "/update", body),
                   content_type=web.MSGPACK)
    assert ok.status_code == 200 and ok.json["received"] == 1
    _assert_rejected(http.post("/update", data=body, headers=_sig(0, "POST", "/update", body)),
                     "already sent", {409})
    status = http.get("/status").json
    assert status["open_round"]["received"] == [0] and status["open_round"]["selected"] == [0, 1]
    assert set(status["registered"]) == {"0", "1", "2"}
    closed = coord.close_round()
    assert list(closed.received) == [0]
    late = wire.encode_update(_update(coord, cid=1))
    _assert_rejected(http.post("/update", data=late, headers=_sig(1, "POST", "/update", late)),
                     "closed", {409})
    # The collected result: client 0's delta in slot 0, zeros in slot 1.
    res = coord._result(closed, 2)
    leaf = jax.tree.leaves(res.delta)[0]
    assert leaf.shape[0] == 2 and np.all(leaf[0] == np.float32(0.01)) and np.all(leaf[1] == 0)
    np.testing.assert_array_equal(res.steps, [5, 0])
    assert http.get("/health").status_code == 200


def test_wire_round_trip_and_size_limit(setup):
    coord, _, params = setup
    upd = _update(coord, cid=1, loss=1.5)
    back = wire.decode_update(wire.encode_update(upd), coord.template, coord.max_bytes)
    assert back._replace(delta=None) == upd._replace(delta=None)
    for a, b in zip(jax.tree.leaves(back.delta), jax.tree.leaves(upd.delta)):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    data = wire.encode_model(params, 7)
    with pytest.raises(wire.WireError, match="over the limit") as err:
        wire.decode_model(data, coord.template, max_bytes=len(data) - 1)
    assert err.value.status == 413
    assert wire.decode_model(data, coord.template, max_bytes=len(data))[1] == 7
    # msgpack_restore never unpickles: an object-dtype array is refused, not loaded.
    evil = msgpack.packb({"round": 1, "params": msgpack.ExtType(
        1, msgpack.packb(((1,), "O", b"\x80\x04K\x01."), use_bin_type=True))},
        use_bin_type=True)
    with pytest.raises(wire.WireError, match="malformed msgpack"):
        wire.decode_model(evil, coord.template)
    assert json.loads(json.dumps(web.finite_or_none({"a": float("nan"), "b": 1.0}))) == {
        "a": None, "b": 1.0}


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers each request with the next status of ``server.script`` (then 200)."""

    def do_GET(self):
        self.server.seen.append(self.path)
        script = self.server.script
        code = script.pop(0) if script else 200
        if code is None:                       # never answer: the caller times out
            threading.Event().wait(2)          # (not time.sleep: tests fake it)
            return
        body = json.dumps({"error": f"scripted {code}"} if code >= 400 else {"ok": True})
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    """A loopback HTTP server answering a scripted list of statuses; yields (url, server)."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    srv.script, srv.seen = [], []
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def fake_clock(monkeypatch):
    """Sleeps are recorded, not slept, and move the monotonic clock forward by as much."""
    sleeps, real = [], time.monotonic
    monkeypatch.setattr(web.time, "sleep", sleeps.append)
    monkeypatch.setattr(web.time, "monotonic", lambda: real() + sum(sleeps))
    return sleeps


def test_calls_retry_5xx_with_backoff_then_succeed(scripted, fake_clock):
    url, srv = scripted
    srv.script[:] = [503, 500, 502, 503]
    http = web.session(60, backoff=0.1, max_delay=0.5)
    assert json.loads(web.call("GET", f"{url}/health", http=http)) == {"ok": True}
    assert len(srv.seen) == 5
    # urllib3's schedule: at once, then 2b, 4b, ... capped at max_delay.
    assert fake_clock == [0.2, 0.4, 0.5]


def test_calls_give_up_after_their_time_budget(scripted, fake_clock):
    url, srv = scripted
    srv.script[:] = [503] * 50
    http = web.session(1.0, backoff=0.1, max_delay=0.5)
    with pytest.raises(web.Unavailable, match=r"GET .*/health: HTTP 503: scripted 503"):
        web.call("GET", f"{url}/health", http=http)
    # Failures at 0, 0 (retried at once), 0.2, 0.6; the next try would start at 1.1 > 1.0.
    assert fake_clock == [0.2, 0.4] and len(srv.seen) == 4


def test_refusals_are_not_retried(scripted, fake_clock):
    url, srv = scripted
    srv.script[:] = [409]
    with pytest.raises(web.HttpError, match="HTTP 409: scripted 409") as err:
        web.call("GET", f"{url}/update", http=web.session(60))
    assert err.value.status == 409 and len(srv.seen) == 1 and fake_clock == []


def test_unreachable_and_timeouts_are_unavailable(scripted, fake_clock):
    # A refused connection, without retries, and with a stop event already set.
    dead = f"http://127.0.0.1:{launch.free_port()}/health"
    with pytest.raises(web.Unavailable, match="Connection refused"):
        web.call("GET", dead, timeout=2)
    stop = threading.Event()
    stop.set()
    with pytest.raises(web.Unavailable, match="Connection refused"):
        web.call("GET", dead, timeout=2, http=web.session(600, stop=stop))
    assert fake_clock == []
    # A peer that accepts but never answers: the read timeout, not a hang.
    url, srv = scripted
    srv.script[:] = [None]
    with pytest.raises(web.Unavailable, match="timed out"):
        web.call("GET", f"{url}/slow", timeout=0.3)
    assert srv.seen == ["/slow"]


def test_sessions_ignore_environment_proxies(scripted, monkeypatch):
    url, srv = scripted
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")   # nothing listens there
    monkeypatch.setenv("NO_PROXY", "")
    assert json.loads(web.call("GET", f"{url}/health", http=web.session())) == {"ok": True}


@pytest.mark.parametrize("argv, code, text", [
    (["client", QUICK, "--server", "http://127.0.0.1:9"], 2, "--client-id"),
    (["client", QUICK, "--client-id", "1"], 2, "--server"),
    (["client", QUICK, "--client-id", "30", "--server", "http://127.0.0.1:9"], 1,
     "client_id=30"),
    (["launch", QUICK, "--clients", "0"], 2, "--clients 0"),
    (["serve", QUICK, "--set", "roundz=1"], 2, "roundz"),
])
def test_networked_commands_bad_arguments(argv, code, text, capsys, monkeypatch):
    for name in ("FSJAX_CLIENT_ID", "FSJAX_SERVER_URL"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip()
    assert text in err and len(err.splitlines()) == 1, err


@pytest.mark.processes
@pytest.mark.parametrize("module", ["fsjax", "fsjax.cli"])
def test_usage_error_from_serving_is_one_line_under_python_m(module):
    out = subprocess.run([sys.executable, "-m", module, "launch", QUICK, "--clients", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "fsjax: error: --clients 0: expected at least 1"], out.stderr


@pytest.mark.parametrize("command", ["serve", "client", "launch"])
def test_networked_commands_without_the_serve_extra(command, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "flask", None)      # as if flask were not installed
    assert cli.main([command, QUICK, "--clients", "2"] if command == "launch"
                    else [command, QUICK]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"fsjax: error: fsjax {command} needs the 'serve' extra: pip install 'fsjax[serve]'"]


def test_a_round_after_shutdown_stops_the_run_instead_of_a_pool_error(cfg):
    """shutdown() closes the push pool; a round thread still submitting gets ServerStopped
    (the run ends as stopped) instead of the pool's RuntimeError and a traceback."""
    from fsjax.serving.coordinator import ServerStopped

    coord = server.Coordinator(cfg, token=TOKEN)
    http = server.create_app(cfg, coord).test_client()
    for cid in range(C):
        r = http.post("/register", json=_registration(coord, cid), headers=AUTH)
        assert r.status_code == 200, r.json
    sim = coord.sim
    state = sim.init()
    _, plan, _ = jax.jit(sim.plan_round)(state, sim.data)
    coord.shutdown()
    with pytest.raises(ServerStopped):
        coord.train_round(state, plan)
