"""One federated client process: its own shard, the simulation's local training.

A client loads the data set and builds the partition exactly as the
simulation does (same config and seed), keeps row ``client_id`` of the padded
client arrays and drops the rest, and trains with the simulation's own
``local_train(params, shard, steps, key)`` (jitted; compiled once at start-up,
before registering, so a round's deadline covers training only).

Protocol (push, like the study's clients):

1. serve ``POST /train`` and ``GET /health`` (:mod:`fsjax.serving.httpserver`, in a thread);
2. ``POST /register`` on the server ``{client_id, num_examples,
   label_histogram, url, secret}`` with the enrolment token (the secret is
   this client's credential; every later request is signed with it, and so
   is every push the server makes to it: :mod:`fsjax.serving.auth`);
3. every ``heartbeat`` seconds ``POST /status {client_id, available, latency}``;
   an answer ``404`` (a restarted server that does not know us) makes the
   client register again, ``done: true`` ends it;
4. on ``POST /train {round, steps, key, client_id}`` (answered ``202`` at
   once), a worker thread fetches ``GET /model``, checks its round, trains, and
   posts ``POST /update`` (msgpack, :mod:`fsjax.serving.wire`).

Every call to the server retries with exponential backoff while the server is
unreachable or answers 5xx (registration, model fetch, update, status), for
up to ``give_up_after`` seconds (:func:`fsjax.serving.web.session`); a 4xx
answer is logged and not retried.

Example:
  >>> client = Client(cfg, client_id=3, server_url="http://127.0.0.1:8080")  # doctest: +SKIP
  >>> app = create_app(cfg, client)                                         # doctest: +SKIP
"""

from __future__ import annotations

import gc
import json
import logging
import queue
import threading
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fsjax import local, simulation
from fsjax.config import ExperimentConfig
from fsjax.serving import auth, web, wire

log = logging.getLogger(__name__)

MAX_STEPS = 1_000_000
RETRY_MAX_DELAY = 2.0   # seconds; a restarted server is found again quickly


class TrainJob(NamedTuple):
    round: int
    steps: int
    key: tuple[int, int]


class Client:
    """One federated client: its shard, its trainer and its calls to the server.

    Args:
      cfg: the experiment config (the server's, same seed).
      client_id: this client's index in ``[0, partition.num_clients)``.
      server_url: e.g. ``"http://127.0.0.1:8080"``.
      url: the URL the server reaches this client at (set later by the runner
        when the port is only known once bound).
      token: the enrolment token, the server's ``FSJAX_TOKEN`` or this id's
        derived one (default ``$FSJAX_TOKEN``); sent only with registration.
      secret: this client's credential (default: a fresh random one); sent
        once, at registration, then only used to sign.
      ca_bundle: CA bundle the server's HTTPS certificate must chain to
        (default ``$FSJAX_CA_BUNDLE``, else the system's).
      heartbeat: seconds between status reports.
      give_up_after: seconds of an unreachable server after which calls stop
        retrying (and the process exits).
      train_delay: seconds to sleep before each local training (a slow device).
    """

    def __init__(self, cfg: ExperimentConfig, client_id: int = 0,
                 server_url: str = "http://127.0.0.1:8080", *,
                 url: str | None = None, token: str | None = None, heartbeat: float = 2.0,
                 give_up_after: float = 600.0, train_delay: float = 0.0,
                 secret: str | None = None, ca_bundle: str | None = None):
        C = cfg.partition.num_clients
        if not 0 <= client_id < C:
            raise ValueError(f"client_id={client_id}: expected an index in [0, {C}) "
                             f"(partition.num_clients={C})")
        if heartbeat <= 0 or give_up_after <= 0 or train_delay < 0:
            raise ValueError(f"heartbeat={heartbeat}, give_up_after={give_up_after}, "
                             f"train_delay={train_delay}: expected > 0, > 0 and >= 0 seconds")
        self.config = cfg
        self.client_id = client_id
        self.server_url = server_url.rstrip("/")
        self.url = url
        self.token = web.resolve_token(token)
        self.secret = secret or auth.new_secret()
        self.heartbeat = heartbeat
        self.give_up_after = give_up_after
        self.train_delay = train_delay
        # The simulation's own set-up gives the same partition and the same
        # local_train; keep this client's row and let the rest go.
        sim = simulation.Simulation(cfg)
        self.shard = local.Shard(*(jnp.asarray(np.array(a[client_id]))
                                   for a in (sim.data.x, sim.data.y, sim.data.n)))
        self.num_examples = int(sim.data.n[client_id])
        self.label_histogram = [float(v) for v in np.asarray(sim.data.label_hist[client_id])]
        self.template = wire.params_template(sim.model, sim.dataset.image_shape)
        self.max_bytes = wire.default_max_bytes(self.template)
        self._train = jax.jit(sim.local_train)
        del sim
        gc.collect()
        self.jobs: queue.Queue[TrainJob] = queue.Queue(maxsize=16)
        self.stop = threading.Event()
        self.http = web.session(give_up_after, max_delay=RETRY_MAX_DELAY, stop=self.stop,
                                ca_bundle=ca_bundle)
        self.registered = threading.Event()
        self.last_round = 0
        self.last_latency: float | None = None
        self.exit_code = 0

    # ------------------------------------------------------------ training

    def warm_up(self) -> None:
        """Compiles local training (zero steps) so the first round does not wait for it."""
        key = jnp.zeros(2, jnp.uint32)
        jax.block_until_ready(self._train(self.template, self.shard, jnp.int32(0), key))

    def train(self, params: Any, steps: int, key) -> local.LocalResult:
        """Local training from ``params`` (numpy in, numpy out)."""
        out = self._train(params, self.shard, jnp.int32(steps), jnp.asarray(key, jnp.uint32))
        return jax.device_get(out)

    # --------------------------------------------------------- server calls

    def _call(self, method: str, path: str, body=None, timeout: float = 30.0):
        """A call signed with this client's credential."""
        return web.call(method, self.server_url + path, body=body, timeout=timeout,
                        http=self.http, sign=(self.client_id, self.secret))

    def register(self) -> None:
        """``POST /register`` with the enrolment token and this client's credential
        (retrying while the server is down; a retry after a lost answer is accepted,
        the credential being the same)."""
        web.call("POST", self.server_url + "/register", body={
            "client_id": self.client_id, "num_examples": self.num_examples,
            "label_histogram": self.label_histogram, "url": self.url, "secret": self.secret},
            token=self.token, timeout=30.0, http=self.http)
        self.registered.set()
        log.info("client %d registered with %s as %s", self.client_id, self.server_url,
                 self.url)

    def report_status(self) -> dict:
        """``POST /status``; registers again when the server does not know this client."""
        body = {"client_id": self.client_id, "available": True}
        if self.last_latency is not None:
            body["latency"] = self.last_latency
        try:
            out = json.loads(self._call("POST", "/status", body, timeout=10))
        except web.HttpError as err:
            if err.status != 404:
                raise
            log.info("client %d: server does not know us (%s); registering again",
                     self.client_id, err.message)
            self.registered.clear()
            self.register()
            return {}
        return out

    def run_job(self, job: TrainJob) -> bool:
        """Fetches the model, trains, posts the update; False when the job was stale."""
        if self.train_delay:
            if self.stop.wait(self.train_delay):
                return False
        data = self._call("GET", "/model")
        params, model_round = wire.decode_model(data, self.template, self.max_bytes)
        if model_round != job.round:
            log.info("client %d: skipping round %d (the server is at round %d)",
                     self.client_id, job.round, model_round)
            return False
        t0 = time.perf_counter()
        out = self.train(params, job.steps, job.key)
        self.last_latency = time.perf_counter() - t0
        update = wire.Update(self.client_id, job.round, self.num_examples, float(out.loss),
                             float(out.loss0), int(out.steps), out.delta)
        self._call("POST", "/update", wire.encode_update(update))
        self.last_round = job.round
        return True

    # --------------------------------------------------------------- loops

    def worker(self) -> None:
        """Runs queued training jobs until ``stop``; errors are logged, never fatal."""
        while not self.stop.is_set():
            try:
                job = self.jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.run_job(job)
            except web.HttpError as err:
                log.warning("client %d round %d: server refused: %s", self.client_id,
                            job.round, err)
            except web.Unavailable as err:
                log.warning("client %d round %d: server unreachable: %s", self.client_id,
                            job.round, err)
            except Exception:  # noqa: BLE001 - keep the client alive for the next round
                log.exception("client %d round %d failed", self.client_id, job.round)

    def heartbeat_loop(self) -> None:
        """Status reports every ``heartbeat`` s; stops the client when the run is done
        or the server stayed unreachable for ``give_up_after`` s."""
        while not self.stop.wait(self.heartbeat):
            try:
                if self.report_status().get("done"):
                    log.info("client %d: the run is done", self.client_id)
                    self.stop.set()
            except web.Unavailable as err:
                if not self.stop.is_set():
                    log.error("client %d: giving up: %s", self.client_id, err)
                    self.exit_code = 1
                    self.stop.set()
            except web.HttpError as err:
                log.warning("client %d: status refused: %s", self.client_id, err)

    def enqueue(self, body: dict) -> TrainJob:
        """Validates a ``POST /train`` body and queues the job."""
        web.check_fields(body, ("round", "steps", "key", "client_id"))
        cid = web.int_field(body, "client_id", required=False)
        if cid is not None and cid != self.client_id:
            raise web.ApiError(409, f"training request for client {cid}; this is client "
                               f"{self.client_id}")
        key = body.get("key")
        if not (isinstance(key, list) and len(key) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 32
                for v in key)):
            raise web.ApiError(400, f"field 'key'={key!r:.80}: expected two uint32 integers")
        job = TrainJob(web.int_field(body, "round", lo=1),
                       web.int_field(body, "steps", lo=0, hi=MAX_STEPS), (key[0], key[1]))
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise web.ApiError(429, "too many queued training requests") from None
        return job


# ------------------------------------------------------------------- the app


def create_app(config: ExperimentConfig, client: Client | None = None, **kwargs):
    """The client's Flask app (``POST /train``, ``GET /health``).

    Args:
      config: the experiment config.
      client: an existing :class:`Client` (built from ``config`` and ``kwargs``,
        e.g. ``client_id`` and ``server_url``, when omitted).
    """
    from flask import Flask, jsonify

    client = client or Client(config, **kwargs)
    app = Flask(f"fsjax-client-{client.client_id}")
    app.config["MAX_CONTENT_LENGTH"] = web.JSON_MAX_BYTES
    app.extensions["fsjax"] = client
    web.install_error_handlers(app)

    @app.get("/health")
    def health():
        return jsonify(ok=True, client_id=client.client_id,
                       registered=client.registered.is_set(), last_round=client.last_round,
                       queued=client.jobs.qsize())

    @app.post("/train")
    def train():
        # Only the server holds this client's credential: it signs each push.
        data = web.read_body()
        signer = web.authenticate_client(lambda cid: client.secret, data)
        if signer != client.client_id:
            raise web.ApiError(403, f"training request signed for client {signer}; this is "
                                    f"client {client.client_id}")
        job = client.enqueue(web.json_body(data=data))
        return jsonify(accepted=True, round=job.round), 202

    return app
