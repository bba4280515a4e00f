"""The server's round logic: clients, open rounds, pushes and updates.

A :class:`Coordinator` builds the experiment's :class:`fsjax.simulation.
Simulation` with the host training backend ``fsjax.backends.host("networked",
coordinator.train_round)``: ``train_round`` pushes the round to the selected
clients, waits for their signed updates until the deadline and returns them
as a :class:`fsjax.local.LocalResult` with a leading K axis plus the
``reported`` mask. Registration (per-client credentials), status reports,
the model download and update submission are its methods; the Flask routes
in :mod:`fsjax.serving.server` only parse requests and call them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import jax
import numpy as np

from fsjax import backends, callbacks, local, simulation
from fsjax.config import ExperimentConfig
from fsjax.serving import auth, web, wire

log = logging.getLogger(__name__)


class ServerStopped(KeyboardInterrupt):
    """Raised in the round thread when the server is asked to stop (MLflow: KILLED)."""


@dataclasses.dataclass
class ClientRecord:
    url: str
    num_examples: int
    secret: str = dataclasses.field(default="", repr=False)   # never shown
    available: bool = True
    latency: float | None = None
    last_seen: float = 0.0


@dataclasses.dataclass
class OpenRound:
    round: int
    selected: dict[int, int]                   # client id -> slot
    steps: dict[int, int]                      # client id -> local steps asked for
    received: dict[int, wire.Update] = dataclasses.field(default_factory=dict)
    unreachable: set[int] = dataclasses.field(default_factory=set)
    open: bool = True


class Coordinator:
    """The networked simulation, its client registry and round bookkeeping (thread-safe).

    Builds ``self.sim``, the config's :class:`fsjax.simulation.Simulation`
    with the host backend ``"networked"`` whose training is
    :meth:`train_round` (push the round to the selected clients, collect
    their updates).

    Args:
      config: the experiment config.
      dataset: use this data set instead of loading ``config.data``.
      token: the enrolment token (default ``$FSJAX_TOKEN``; ``""`` = none:
        any client may enrol any free id).
      round_timeout: seconds a round waits for the selected clients.
      register_timeout: seconds to wait for all clients before round 1.
      push_timeout: seconds for each ``POST /train`` to a client.
      max_bytes: body size limit (default: twice the params' size plus 64 KiB).
      ca_bundle: CA bundle that clients' HTTPS certificates must chain to
        (default ``$FSJAX_CA_BUNDLE``, else the system's).
    """

    def __init__(self, config: ExperimentConfig, *, dataset=None, token: str | None = None,
                 round_timeout: float = 60.0, register_timeout: float = 300.0,
                 push_timeout: float = 5.0, max_bytes: int | None = None,
                 ca_bundle: str | None = None):
        if round_timeout <= 0 or register_timeout < 0:
            raise ValueError(f"round_timeout={round_timeout}, register_timeout="
                             f"{register_timeout}: expected > 0 and >= 0 seconds")
        self.sim = sim = simulation.Simulation(
            config, dataset, backend=backends.host("networked", self.train_round))
        self.config = config
        self.num_clients = sim.num_clients
        self.token = web.resolve_token(token)
        self.round_timeout = round_timeout
        self.register_timeout = register_timeout
        self.push_timeout = push_timeout
        self.template = wire.params_template(sim.model, sim.dataset.image_shape)
        self.max_bytes = max_bytes or wire.default_max_bytes(self.template)
        self._n = np.asarray(sim.data.n)
        self._hist = np.asarray(sim.data.label_hist)
        self.cond = threading.Condition()
        self.clients: dict[int, ClientRecord] = {}
        self.current: OpenRound | None = None
        self.model_bytes: bytes | None = None
        self.model_round = 0
        self.last_metrics: dict[str, float] = {}
        self.done = False
        self.error: str | None = None
        self.stopping = False
        self._closed = False   # shutdown() ran: no more pushes
        self._waited = False
        # Pushes give up after a second: an unreachable client fails its slot at once.
        self._http = web.session(give_up_after=1.0, backoff=0.05, ca_bundle=ca_bundle)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, min(32, sim.num_slots)), thread_name_prefix="fsjax-push")

    # ------------------------------------------------------------ handlers

    def register(self, body: dict, bearer: str | None = None) -> dict:
        """``POST /register``: enrols a new id, or re-registers one with its credential.

        Args:
          body: ``{client_id, num_examples, label_histogram, url, secret}``.
          bearer: the request's bearer token: the enrolment token, or the
            id's derived one (:func:`fsjax.serving.auth.enrolment_token`);
            needed to enrol a new id when the server has a token.
        """
        web.check_fields(body, ("client_id", "num_examples", "label_histogram", "url",
                                "secret"))
        cid = self._client_id(body)
        if "secret" not in body:
            raise web.ApiError(400, "missing field 'secret' (the client's credential)")
        secret = body["secret"]
        if not (isinstance(secret, str) and 16 <= len(secret) <= 256 and secret.isascii()
                and secret.isprintable()):
            raise web.ApiError(400, "field 'secret': expected the client's credential, a "
                                    "string of 16 to 256 printable ASCII characters")
        with self.cond:
            rec = self.clients.get(cid)
        if rec is not None:
            if not auth.same_secret(secret, rec.secret):
                raise web.ApiError(403, f"client id {cid} is already registered; registering "
                                        "it again needs that client's credential")
        elif not auth.may_enrol(self.token, cid, bearer):
            if bearer is None:
                raise web.ApiError(401, "missing 'Authorization: Bearer <token>' header "
                                   f"(enrolling a client needs {web.TOKEN_ENV} or the "
                                   "client's enrolment token)")
            raise web.ApiError(403, f"wrong enrolment token for client {cid}")
        n = web.int_field(body, "num_examples", lo=0)
        hist = body.get("label_histogram")
        L = self._hist.shape[1]
        try:
            if not (isinstance(hist, list) and len(hist) == L and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in hist)):
                raise ValueError
            counts = np.asarray(hist, np.float64)
        except (ValueError, OverflowError):
            raise web.ApiError(400, f"field 'label_histogram': expected a list of {L} "
                               "counts") from None
        url = web.url_field(body, "url")
        try:
            host = urlsplit(url).hostname or ""
        except ValueError:
            raise web.ApiError(400, f"field 'url'={url!r:.80}: expected an http(s) URL") from None
        if host in ("0.0.0.0", "::", ""):
            raise web.ApiError(422, f"field 'url'={url!r}: a wildcard address, not one the "
                                    "server can reach")
        if n != int(self._n[cid]) or not np.array_equal(counts, self._hist[cid]):
            raise web.ApiError(422, f"client {cid} reports {n} examples with label counts "
                               f"{hist}; the server's partition gives it {int(self._n[cid])} "
                               f"with {self._hist[cid].astype(int).tolist()} (same config "
                               "and seed on both sides?)")
        with self.cond:
            rec = self.clients.get(cid)
            if rec is not None and not auth.same_secret(secret, rec.secret):
                raise web.ApiError(403, f"client id {cid} is already registered; registering "
                                        "it again needs that client's credential")
            new = rec is None
            if new:
                self.clients[cid] = ClientRecord(url, n, secret)
            elif rec.url != url:
                log.info("client %d moved from %s to %s (its credential)", cid, rec.url, url)
                rec.url = url
            self.clients[cid].last_seen = time.time()
            self.cond.notify_all()
        if new:
            log.info("client %d registered from %s (%d/%d)", cid, url, len(self.clients),
                     self.num_clients)
        return {"ok": True, "client_id": cid, "num_clients": self.num_clients,
                "round": self.model_round}

    def secret_of(self, cid: int) -> str | None:
        """Client ``cid``'s credential, None when it is not registered."""
        with self.cond:
            rec = self.clients.get(cid)
            return None if rec is None else rec.secret

    @staticmethod
    def _same_client(cid: int, signer: int | None) -> None:
        if signer is not None and cid != signer:
            raise web.ApiError(403, f"request signed by client {signer} speaks for client {cid}")

    def report_status(self, body: dict, signer: int | None = None) -> dict:
        """``POST /status`` from client ``signer`` (the id that signed the request)."""
        web.check_fields(body, ("client_id", "available", "latency"))
        cid = self._client_id(body)
        self._same_client(cid, signer)
        available = web.bool_field(body, "available")
        latency = web.float_field(body, "latency", lo=0.0, required=False)
        with self.cond:
            rec = self._registered(cid)
            rec.available, rec.last_seen = available, time.time()
            if latency is not None:
                rec.latency = latency
            return {"ok": True, "round": self.model_round, "done": self.done}

    def model(self) -> bytes:
        with self.cond:
            if self.model_bytes is None:
                raise web.ApiError(409, "no model yet: the first round has not started")
            return self.model_bytes

    def submit_update(self, data: bytes, signer: int | None = None) -> dict:
        """``POST /update`` from client ``signer`` (the id that signed the request)."""
        try:
            upd = wire.decode_update(data, self.template, self.max_bytes)
        except wire.WireError as err:
            raise web.ApiError(err.status, str(err)) from None
        cid = upd.client_id
        self._same_client(cid, signer)
        if cid >= self.num_clients:
            raise web.ApiError(404, f"unknown client id {cid}: this experiment has clients "
                               f"0..{self.num_clients - 1}")
        with self.cond:
            self._registered(cid)
            cur = self.current
            if cur is None or upd.round != cur.round:
                now = cur.round if cur else 0
                kind = "stale" if upd.round < now else "future"
                raise web.ApiError(409, f"update for round {upd.round} is {kind}: the "
                                   f"current round is {now}")
            if not cur.open:
                raise web.ApiError(409, f"update for round {upd.round} is stale: the round "
                                   "has closed (deadline passed)")
            if cid not in cur.selected:
                raise web.ApiError(403, f"client {cid} was not selected in round {cur.round}")
            if cid in cur.received:
                raise web.ApiError(409, f"client {cid} already sent its update for round "
                                   f"{cur.round}")
            if upd.num_examples != self.clients[cid].num_examples:
                raise web.ApiError(422, f"update num_examples={upd.num_examples}; client "
                                   f"{cid} registered {self.clients[cid].num_examples}")
            if upd.steps > cur.steps[cid]:
                raise web.ApiError(422, f"update steps={upd.steps}; round {cur.round} asked "
                                   f"client {cid} for {cur.steps[cid]}")
            cur.received[cid] = upd
            self.cond.notify_all()
            return {"ok": True, "round": cur.round, "received": len(cur.received),
                    "selected": len(cur.selected)}

    def status(self, full: bool = False) -> dict:
        """``GET /status``; client URLs only when ``full`` (the request had the token)."""
        with self.cond:
            cur = self.current
            return {
                "round": self.model_round, "rounds": self.config.rounds, "done": self.done,
                "error": self.error, "num_clients": self.num_clients,
                "registered": {str(c): {
                    "num_examples": r.num_examples, "available": r.available,
                    "latency": r.latency, "last_seen": r.last_seen,
                    **({"url": r.url} if full else {})} for c, r in sorted(self.clients.items())},
                "open_round": None if cur is None else {
                    "round": cur.round, "open": cur.open, "selected": sorted(cur.selected),
                    "received": sorted(cur.received), "unreachable": sorted(cur.unreachable)},
                "last_metrics": web.finite_or_none(self.last_metrics)}

    def _client_id(self, body: dict) -> int:
        cid = web.int_field(body, "client_id")
        if not 0 <= cid < self.num_clients:
            raise web.ApiError(404, f"unknown client id {cid}: this experiment has clients "
                               f"0..{self.num_clients - 1}")
        return cid

    def _registered(self, cid: int) -> ClientRecord:
        rec = self.clients.get(cid)
        if rec is None:
            raise web.ApiError(404, f"client {cid} is not registered")
        return rec

    # ------------------------------------------------------------- rounds

    def open_round(self, round_: int, params: Any, selected: dict[int, int],
                   steps: dict[int, int]) -> None:
        """Serves ``params`` as round ``round_``'s model and accepts its updates."""
        model = wire.encode_model(params, round_)
        with self.cond:
            self.model_bytes, self.model_round = model, round_
            self.current = OpenRound(round_, dict(selected), dict(steps))

    def close_round(self) -> OpenRound:
        with self.cond:
            cur = self.current
            cur.open = False
            return cur

    def stop(self) -> None:
        """Makes the round thread raise :class:`ServerStopped` at its next wait."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def wait_for_clients(self) -> None:
        """Blocks until every client registered or ``register_timeout`` passed."""
        deadline = time.monotonic() + self.register_timeout
        with self.cond:
            while len(self.clients) < self.num_clients and not self.stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 1.0))
            if self.stopping:
                raise ServerStopped("server stopped")
            missing = sorted(set(range(self.num_clients)) - set(self.clients))
        if len(missing) == self.num_clients:
            raise ValueError(f"no client registered within {self.register_timeout:g} s")
        if missing:
            log.warning("starting without clients %s (not registered after %g s); they "
                        "fail when selected", missing, self.register_timeout)

    def _push(self, cid: int, job: dict) -> None:
        with self.cond:
            rec = self.clients.get(cid)
        try:
            if rec is None:
                raise web.Unavailable("not registered")
            # Signed with the client's own credential; the enrolment token never leaves.
            web.call("POST", f"{rec.url}/train", body=job, sign=(cid, rec.secret),
                     timeout=self.push_timeout, http=self._http)
        except Exception as err:  # noqa: BLE001 - any failure means no update is coming
            log.warning("round %d: client %d unreachable: %s", job["round"], cid, err)
            with self.cond:
                if self.current is not None and self.current.round == job["round"]:
                    self.current.unreachable.add(cid)
                    self.cond.notify_all()

    def train_round(self, state, plan, shards=None):
        """The networked backend's training: push the round, wait, collect.

        Args:
          state: the round state (``params``, ``round``).
          plan: the :class:`fsjax.simulation.RoundPlan` (``slots``, ``valid``,
            ``steps``, ``keys``; K slots).
          shards: unused (each client holds its own shard).

        Returns:
          ``(LocalResult with a leading K axis, reported bool[K])``: zeros and
          False where no update came before the deadline.
        """
        if not self._waited:
            self.wait_for_clients()
            self._waited = True
        round_ = int(state.round) + 1
        slots, valid, steps, keys = (np.asarray(a) for a in (plan.slots, plan.valid,
                                                             plan.steps, plan.keys))
        selected = {int(slots[k]): k for k in np.flatnonzero(valid)}
        asked = {c: int(steps[k]) for c, k in selected.items()}
        self.open_round(round_, jax.device_get(state.params), selected, asked)
        t0 = time.monotonic()
        for cid, k in selected.items():
            job = {"round": round_, "client_id": cid, "steps": int(steps[k]),
                   "key": [int(v) for v in np.asarray(keys[k]).reshape(-1)]}
            try:
                self._pool.submit(self._push, cid, job)
            except RuntimeError:   # shutdown() closed the pool: the server is stopping
                if not (self.stopping or self._closed):
                    raise
                raise ServerStopped("server stopped") from None
        deadline = t0 + self.round_timeout
        with self.cond:
            cur = self.current
            while not self.stopping and len(cur.received) + len(
                    cur.unreachable - set(cur.received)) < len(selected):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            if self.stopping:
                raise ServerStopped("server stopped")
        cur = self.close_round()
        # Unreachable clients were logged by _push; these are the ones the round waited for.
        late = sorted(set(selected) - set(cur.received) - cur.unreachable)
        if late:
            log.warning("round %d: no update from clients %s by the deadline (%.1f s; "
                        "counted as failed)", round_, late, time.monotonic() - t0)
        return self._result(cur, len(slots)), np.asarray(
            [bool(valid[k]) and int(slots[k]) in cur.received for k in range(len(slots))])

    def _result(self, cur: OpenRound, num_slots: int) -> local.LocalResult:
        deltas = [self.template] * num_slots
        loss, loss0 = np.zeros(num_slots, np.float32), np.zeros(num_slots, np.float32)
        steps = np.zeros(num_slots, np.int32)
        for cid, upd in cur.received.items():
            k = cur.selected[cid]
            deltas[k] = upd.delta
            loss[k], loss0[k], steps[k] = upd.loss, upd.loss0, upd.steps
        delta = jax.tree.map(lambda *xs: np.stack(xs), *deltas)
        return local.LocalResult(delta, loss, loss0, steps)

    def shutdown(self) -> None:
        """Stops the push threads (pending pushes are dropped)."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    def callback(self) -> callbacks.Callback:
        """The run callback that publishes metrics and the end of the run."""
        return _StatusCallback(self)


class _StatusCallback(callbacks.Callback):
    def __init__(self, coord: Coordinator):
        self.coord = coord

    def on_round(self, sim, round_index, metrics, state) -> None:
        with self.coord.cond:
            self.coord.last_metrics = dict(metrics)

    def on_end(self, sim, history) -> None:
        model = wire.encode_model(history.params, int(history.state.round))
        with self.coord.cond:
            self.coord.model_bytes, self.coord.model_round = model, int(history.state.round)
            self.coord.done = True

    def on_error(self, sim, error) -> None:
        with self.coord.cond:
            self.coord.done = True
            self.coord.error = f"{type(error).__name__}: {error}"
