"""Run tracking in MLflow (the only module importing mlflow).

The CSV files of a run are :mod:`fsjax.csvlog` (:class:`CsvLogger`, re-exported
here). :class:`MlflowTracker` logs the resolved config as flattened params
and as ``config.yaml``, every round's metrics with ``step=round``, the CSVs and
the figures as artifacts, and tags: MLflow's own context tags (user, source,
``mlflow.source.git.commit``) plus the JAX backend and devices, the engine mode
and the data. A run that raises is marked ``FAILED`` (``KILLED`` on Ctrl-C).
MLflow is optional (the ``track`` extra) and imported only here, lazily, so
the CSV logger works without it.

In MLflow, metrics carry a prefix so the UI groups them (:func:`mlflow_key`):
``accuracy/accuracy_mean``, ``accuracy/test_accuracy``, ``fairness/<metric>``
for the other nine fairness metrics; the CSV files keep the plain names.
:func:`runs_table_url` is the direct link to an experiment's runs table.
The sweep's parent runs and its temporary MLflow server (one writer for a
SQLite store while several workers log) are here too: :func:`start_parent_run`,
:func:`finish_parent_run`, :func:`serve_store`.

The tracker is a :class:`fsjax.callbacks.Callback`.

The default store is a local SQLite file, ``sqlite:///mlruns.db``, so
``mlflow ui --backend-store-uri sqlite:///mlruns.db`` shows every run;
``MLFLOW_TRACKING_URI`` or ``--tracking-uri`` choose another.

Example:
  >>> tracker = MlflowTracker("sqlite:///mlruns.db", "demo", run_dir)   # doctest: +SKIP
  >>> simulation.run(cfg, [CsvLogger(run_dir), tracker])                # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fsjax import config as config_lib
from fsjax.callbacks import Callback
from fsjax.extras import require
from fsjax.files import atomic_write
from fsjax.metrics import FAIRNESS_NAMES
# The CSV files live in fsjax.csvlog; these names stay importable from here.
from fsjax.csvlog import (FINAL_METRICS, METRICS_LOG, CsvLogger,  # noqa: F401
                          ordered_columns, read_metrics_csv, write_final_csv,
                          write_metrics_csv)

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
RUN_INFO = "run.json"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else :data:`DEFAULT_TRACKING_URI`."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fails fast with a clear ``ValueError`` when the store cannot be reached.

    HTTP servers are probed at ``/health``; SQLite and file stores must have a
    writable directory.
    """
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
                pass
        except (urllib.error.URLError, OSError) as err:
            raise ValueError(f"tracking URI {uri!r} is unreachable: {err}") from None
        return
    if uri.startswith("sqlite:///"):
        directory = Path(uri[len("sqlite:///"):]).parent
    elif uri.startswith("file:"):
        directory = Path(urllib.parse.urlparse(uri).path)
    elif "://" not in uri:
        directory = Path(uri)
    else:
        return  # other schemes (databricks, postgres...): MLflow reports its own errors
    directory = directory if str(directory) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"tracking URI {uri!r}: cannot create {str(directory)!r}: {err}") from None
    if not os.access(directory, os.W_OK):
        raise ValueError(f"tracking URI {uri!r}: directory {str(directory)!r} is not writable")


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps artifacts: ``mlartifacts/`` beside a SQLite file.

    MLflow's own default for a database store is ``./mlruns`` under the
    current directory, which scatters artifacts; keeping them beside the
    database keeps one store in one place. Other stores use their default.
    """
    if not uri.startswith("sqlite:///"):
        return None
    root = Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts"
    return (root / experiment).as_uri()


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    """The git commit of the repository holding ``cwd``, or ``"unknown"``.

    ``cwd`` defaults to fsjax's own source folder. Uses MLflow's resolver
    (GitPython), the one behind the ``mlflow.source.git.commit`` tag.
    """
    require("track", "MLflow tracking")
    from mlflow.utils.git_utils import get_git_commit
    return get_git_commit(str(cwd or Path(__file__).parent)) or "unknown"


def run_tags(extra: Mapping[str, str]) -> dict[str, str]:
    """MLflow's context tags for a new run, then ``extra``.

    MLflow resolves the git commit from the entry script; when that lies
    outside a repository or in an ignored folder (``.venv/bin/fsjax``), the
    commit of fsjax's own source is used, so a run from a clone always
    records the code that ran.
    """
    require("track", "MLflow tracking")
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    tags = resolve_tags(dict(extra))
    if MLFLOW_GIT_COMMIT not in tags and (commit := git_commit()) != "unknown":
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


ACCURACY_METRICS = ("accuracy_mean", "accuracy_global", "test_accuracy")


def mlflow_key(name: str) -> str:
    """The MLflow metric name of a history column: ``accuracy/`` or ``fairness/`` prefixed.

    Example:
      >>> mlflow_key("accuracy_mean"), mlflow_key("participation_gini"), mlflow_key("train_loss")
      ('accuracy/accuracy_mean', 'fairness/participation_gini', 'train_loss')
      >>> mlflow_key("fairness/label_kl")
      'fairness/label_kl'
    """
    if name in ACCURACY_METRICS:
        return f"accuracy/{name}"
    if name in FAIRNESS_NAMES:
        return f"fairness/{name}"
    return name


def runs_table_url(experiment_id: str, tracking_uri: str | None = None) -> str:
    """The MLflow UI link that opens an experiment's runs table (not the GenAI overview).

    For a database or file store this is the address ``mlflow ui`` serves by
    default; for an MLflow server it is the server's own address.

    Example:
      >>> runs_table_url("3")
      'http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning'
    """
    uri = resolve_tracking_uri(tracking_uri)
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def ui_hint(experiment_id: str | None, tracking_uri: str | None) -> str:
    """Two lines: the command that serves the store and the runs-table link."""
    uri = resolve_tracking_uri(tracking_uri)
    lines = []
    if not uri.startswith(("http://", "https://")):
        lines.append(f"open the MLflow UI:  mlflow ui --backend-store-uri {uri}")
    if experiment_id is not None:
        lines.append(f"runs table:          {runs_table_url(experiment_id, uri)}")
    return "\n".join(lines)


def experiment_id(client, name: str, uri: str, description: str | None = None) -> str:
    """The id of experiment ``name`` (created when missing), with a description.

    The description goes to the ``mlflow.note.content`` tag the UI shows on
    the experiment page; one the user wrote is kept.
    """
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        name, artifact_location=artifact_location(uri, name))
    if description and not (exp and exp.tags.get("mlflow.note.content")):
        client.set_experiment_tag(exp_id, "mlflow.note.content", description)
    return exp_id


def default_description(name: str) -> str:
    """What an fsjax experiment holds, for the MLflow experiment page."""
    return (f"fsjax runs of the experiment `{name}` (simulated federated learning). "
            "Params: the full resolved config, factory defaults included. Metrics per "
            "round (step = round): `accuracy/*` (mean client accuracy, global test "
            "accuracy), `fairness/*` (the ten fairness metrics), and training counters. "
            "Tags: `fsjax.command`, `fsjax.overrides`, git commit, JAX backend. "
            "Sweeps appear as a parent run with one nested run per grid point and seed.")


class MlflowTracker(Callback):
    """Logs a run to MLflow (see module doc). Call order: after :class:`CsvLogger`.

    Args:
      tracking_uri: the store (see :func:`resolve_tracking_uri`).
      experiment: experiment name (default: the config's ``name``).
      run_dir: the run's output directory (CSVs, figures, ``run.json``).
      run_id: continue this MLflow run (resume) instead of starting one.
      figures: save and log the standard figures at the end.
      tags: extra run tags (e.g. a study's arm and seed; ``mlflow.parentRunId``
        nests the run under a sweep's parent run).
      run_name: the MLflow run name (default: the run directory's name).
      description: the experiment's description, set when it has none
        (default :func:`default_description`).

    Raises:
      fsjax.extras.MissingExtra: MLflow is not installed (the ``track`` extra).
    """

    def __init__(self, tracking_uri: str | None, experiment: str | None,
                 run_dir: str | os.PathLike, run_id: str | None = None, figures: bool = True,
                 tags: Mapping[str, str] | None = None, run_name: str | None = None,
                 description: str | None = None):
        require("track", "MLflow tracking")
        self.uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.figures = figures
        self.tags = dict(tags or {})
        self.run_name = run_name
        self.description = description
        self.client = None
        self.experiment_id = None

    def on_start(self, sim) -> None:
        import jax
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        check_tracking_uri(self.uri)
        cfg = sim.config
        self.client = MlflowClient(tracking_uri=self.uri)
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            run = self.client.get_run(self.run_id)
            self.experiment_id = run.info.experiment_id
            if "error" in run.data.tags:   # resumed: the old error no longer describes the run
                self.client.delete_tag(self.run_id, "error")
            if "rounds_history" in self.tags:   # fsjax.resume: a resume changed `rounds`
                self.client.set_tag(self.run_id, "rounds_history", self.tags["rounds_history"])
            return
        name = self.experiment or cfg.name
        exp_id = self.experiment_id = experiment_id(
            self.client, name, self.uri, self.description or default_description(name))
        tags = run_tags({"jax_backend": jax.default_backend(),
                "jax_devices": ", ".join(str(d) for d in jax.devices()),
                "engine_mode": f"{sim.mode}" + (f"(chunk={sim.chunk_size})" if sim.chunk_size
                                                 else ""),
                "data": sim.data_description, "run_dir": str(self.run_dir.resolve()),
                **self.tags})
        run = self.client.create_run(exp_id, run_name=self.run_name or self.run_dir.name,
                                     tags=tags)
        self.run_id = run.info.run_id
        # log_batch splits into MLflow's per-request limits (100 params) itself.
        self.client.log_batch(self.run_id, params=[
            Param(k, str(v)) for k, v in config_lib.flatten(cfg).items()])
        cfg_path = self.run_dir / "config.yaml"
        if not cfg_path.exists():
            atomic_write(cfg_path, config_lib.dump(cfg))
        self.client.log_artifact(self.run_id, str(cfg_path))
        atomic_write(self.run_dir / RUN_INFO, json.dumps(
            {"run_id": self.run_id, "tracking_uri": self.uri, "experiment": name}, indent=2))
        log.info("MLflow run %s in experiment %r at %s", self.run_id, name, self.uri)

    def on_round(self, sim, round_index, metrics, state) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        batch = [Metric(mlflow_key(k), float(v), now, round_index) for k, v in metrics.items()
                 if not (k == "test_accuracy" and math.isnan(v))]
        self.client.log_batch(self.run_id, metrics=batch)

    def on_end(self, sim, history) -> None:
        from fsjax import plots
        if self.figures and history is not None and not (self.run_dir / "figures").is_dir():
            # Without fsjax.outputs.RunOutputs (which writes them in run_in_dir).
            plots.save_run_figures(history.metrics, history.clients, self.run_dir / "figures",
                                   sim.config.name)
        self.upload_outputs()
        self.client.set_terminated(self.run_id, status="FINISHED")

    def upload_outputs(self) -> None:
        """Logs the run directory's CSVs and ``figures/*.png`` that exist as artifacts."""
        for name in (METRICS_LOG, FINAL_METRICS, "clients.csv"):
            if (self.run_dir / name).exists():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        if self.figures:
            for path in sorted((self.run_dir / "figures").glob("*.png")):
                self.client.log_artifact(self.run_id, str(path), artifact_path="figures")

    def on_error(self, sim, error) -> None:
        if self.client is None or self.run_id is None:
            return
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        try:
            self.upload_outputs()   # what exists (RunOutputs wrote it just before)
        except Exception as err:  # noqa: BLE001 - marking the run matters more
            log.warning("could not upload the outputs of MLflow run %s: %s", self.run_id, err)
        try:
            self.client.set_tag(self.run_id, "error", f"{type(error).__name__}: {error}"[:5000])
            self.client.set_terminated(self.run_id, status=status)
        except Exception as err:  # noqa: BLE001 - the original error matters more
            log.warning("could not mark MLflow run %s as %s: %s", self.run_id, status, err)


def fetch_histories(tracking_uri: str | None = None, run_ids: Sequence[str] = (),
                    experiment: str | None = None, metrics: Sequence[str] = ("accuracy_mean",)
                    ) -> dict[str, dict[str, list[float]]]:
    """Metric histories of several runs, by run ids or all runs of an experiment.

    Returns:
      ``{run label: {metric: values by step}}``; labels are run names (with a
      short id when names repeat).

    Raises:
      fsjax.extras.MissingExtra: MLflow is not installed (the ``track`` extra).
    """
    require("track", "MLflow tracking")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    runs = [client.get_run(r) for r in run_ids]
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ValueError(f"experiment {experiment!r}: not found in {tracking_uri!r}")
        runs += client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    if not runs:
        raise ValueError("no runs: give run ids or an experiment name")
    # Label each run by the parameters that tell it apart from the others.
    keys = set().union(*(r.data.params for r in runs))
    differ = sorted(k for k in keys if len({r.data.params.get(k) for r in runs}) > 1
                    and k not in ("output_dir", "name"))
    out: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        label = run.info.run_name or run.info.run_id
        if differ:
            label += " [" + ", ".join(f"{k}={run.data.params.get(k)}" for k in differ) + "]"
        if label in out:
            label = f"{label} ({run.info.run_id[:6]})"
        hist = {}
        for m in metrics:
            points = sorted(client.get_metric_history(run.info.run_id, mlflow_key(m)) or
                            client.get_metric_history(run.info.run_id, m),  # older runs
                            key=lambda p: p.step)
            by_step = {p.step: p.value for p in points}   # a resumed run may repeat steps
            hist[m] = [by_step[s] for s in sorted(by_step)]
        out[label] = hist
    return out


def load_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``run.json`` of a run directory (empty if the run was not tracked)."""
    path = Path(run_dir) / RUN_INFO
    return json.loads(path.read_text()) if path.exists() else {}


def start_parent_run(tracking_uri: str | None, experiment: str, run_name: str,
                     run_id: str | None = None, tags: Mapping[str, str] | None = None,
                     params: Mapping[str, Any] | None = None,
                     description: str | None = None) -> tuple[str, str]:
    """Starts (or, given ``run_id``, reopens) a sweep's parent run; returns ``(run_id, experiment_id)``.

    Children nest under it with the tag ``mlflow.parentRunId``.
    """
    require("track", "MLflow tracking")
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    exp_id = experiment_id(client, experiment, uri, description)
    if run_id is not None:
        try:
            client.update_run(run_id, status="RUNNING")
            return run_id, client.get_run(run_id).info.experiment_id
        except Exception:  # noqa: BLE001 - deleted or from another store: start a new one
            log.warning("sweep parent run %s not found in %s; starting a new one", run_id, uri)
    run = client.create_run(exp_id, run_name=run_name, tags=run_tags(dict(tags or {})))
    if params:
        client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000])
                                                  for k, v in params.items()])
    return run.info.run_id, exp_id


def finish_parent_run(tracking_uri: str | None, run_id: str,
                      metrics: Mapping[str, float] = (), artifacts: Sequence[str | Path] = (),
                      status: str = "FINISHED") -> None:
    """Logs a sweep's summary metrics and files to its parent run and ends it."""
    require("track", "MLflow tracking")
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, 0) for k, v in dict(metrics).items() if v == v]
    if batch:
        client.log_batch(run_id, metrics=batch)
    for path in artifacts:
        path = Path(path)
        client.log_artifact(run_id, str(path),
                            artifact_path="figures" if path.suffix == ".png" else None)
    client.set_terminated(run_id, status=status)


def delete_run(tracking_uri: str | None, run_id: str) -> None:
    """Deletes a run (a sweep child restarted from scratch), ignoring one already gone."""
    require("track", "MLflow tracking")
    from mlflow.tracking import MlflowClient
    try:
        MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri)).delete_run(run_id)
    except Exception as err:  # noqa: BLE001 - a stale id must not stop the sweep
        log.info("could not delete MLflow run %s: %s", run_id, err)
