"""The federated server: a Flask app over the same round code as the simulation.

The :class:`~fsjax.serving.coordinator.Coordinator` builds the experiment's :class:`fsjax.simulation.
Simulation` with a host training backend named ``"networked"``
(``fsjax.backends.host("networked", coordinator.train_round)``): local
training happens in client processes, everything else is the simulation's
own round. ``fsjax serve`` (:func:`fsjax.serving.launch.serve`) runs it with
:func:`fsjax.runs.run_in_dir`, the wiring of ``fsjax run``: the same progress
bar, CSV files, checkpoints and MLflow run (``engine_mode`` tag
``networked``), the same metrics. Each round, in a background thread:

1. ``plan_round`` (jitted once) runs the configured availability model and
   selector with the run's PRNG keys, so the selection equals the
   simulation's; it gives each selected slot its local steps and key.
2. The server opens the round (``GET /model`` now serves its params) and
   pushes ``POST /train {round, steps, key, client_id}`` to each selected
   client (push, like the study's clients; a client that cannot be reached
   is failed at once).
3. It waits until every selected client has posted its update or the round
   deadline (``--round-timeout``) passes, then closes the round: later
   updates are stale.
4. The updates become a :class:`fsjax.local.LocalResult` with a leading K axis
   (zeros where nothing came) and ``finish_round`` (jitted once) aggregates
   them with ``reported=bool[K]``, so a client that did not answer counts in
   ``failed_updates``; evaluation and metrics are the simulation's.

Evaluation: the server holds every client's test split (it builds the same
partition) and evaluates the global model on them exactly like the
simulation. A real deployment would have clients evaluate and report instead.

Availability is the config's model (for fidelity with the simulation); what
clients report on ``POST /status`` (available, latency) is recorded and shown
on ``GET /status`` but does not drive selection.

Endpoints (JSON unless said; errors are 4xx ``{"error": "..."}``):

- ``GET /health``: ``{"ok": true, ...}``.
- ``POST /register`` ``{client_id, num_examples, label_histogram, url}``.
- ``POST /status`` ``{client_id, available, latency}``; answers ``{round, done}``.
- ``GET /model``: msgpack ``{round, params}`` (:mod:`fsjax.serving.wire`).
- ``POST /update``: msgpack :class:`fsjax.serving.wire.Update`.
- ``GET /status``: round, registered clients, the open round, last metrics.

With ``FSJAX_TOKEN`` set, every POST and ``GET /model`` need
``Authorization: Bearer <token>``.

Example:
  >>> from fsjax import config
  >>> app = create_app(config.load("experiments/quick.yaml"))   # doctest: +SKIP
  >>> app.test_client().get("/health").json["ok"]               # doctest: +SKIP
  True
"""

from __future__ import annotations

from fsjax.config import ExperimentConfig
from fsjax.serving import web
from fsjax.serving.coordinator import Coordinator


# ------------------------------------------------------------------- the app


def create_app(config: ExperimentConfig, coordinator: Coordinator | None = None, **kwargs):
    """The server's Flask app.

    Args:
      config: the experiment config.
      coordinator: an existing :class:`Coordinator` (built from ``config`` and
        ``kwargs`` when omitted; the round loop is not started here, see
        :func:`fsjax.serving.launch.serve`).

    Returns:
      A Flask app; ``app.extensions["fsjax"]`` is the coordinator.
    """
    from flask import Flask, Response, jsonify

    coord = coordinator or Coordinator(config, **kwargs)
    app = Flask("fsjax-server")
    app.config["MAX_CONTENT_LENGTH"] = coord.max_bytes
    app.extensions["fsjax"] = coord
    web.install_error_handlers(app)

    @app.get("/health")
    def health():
        return jsonify(ok=True, round=coord.model_round, done=coord.done,
                       registered=len(coord.clients), num_clients=coord.num_clients)

    @app.post("/register")
    def register():
        return jsonify(coord.register(web.json_body(), web.bearer()))

    @app.post("/status")
    def post_status():
        data = web.read_body()
        signer = web.authenticate_client(coord.secret_of, data)
        return jsonify(coord.report_status(web.json_body(data=data), signer))

    @app.get("/status")
    def get_status():
        return jsonify(coord.status(full=web.has_token(coord.token)))

    @app.get("/model")
    def model():
        web.authenticate_client(coord.secret_of, web.read_body())
        return Response(coord.model(), mimetype=web.MSGPACK)

    @app.post("/update")
    def update():
        data = web.read_body(coord.max_bytes)
        signer = web.authenticate_client(coord.secret_of, data)
        return jsonify(coord.submit_update(data, signer))

    return app
