"""Run tracking: CSV files in the run directory and MLflow (the only module importing mlflow).

Two simulation callbacks:

- :class:`CsvLogger` keeps ``metrics_log.csv`` (one row per round) and
  ``final_metrics.csv`` (``metric,value`` of the last round) in the run dir,
  the file names of the CPP study.
- :class:`MlflowTracker` logs the resolved config as flattened params and as
  ``config.yaml``, every round's metrics with ``step=round``, the CSVs and the
  figures as artifacts, and tags: MLflow's own context tags (user, source,
  ``mlflow.source.git.commit``) plus the JAX backend and devices, the engine
  mode and the data. A run that raises is marked ``FAILED`` (``KILLED`` on
  Ctrl-C). MLflow is optional (the ``track`` extra) and imported only here,
  lazily, so the CSV logger works without it.

Both are :class:`fsjax.callbacks.Callback` objects; files are written with
:func:`fsjax.files.atomic_write`, so a reader never sees half a CSV.

The default store is a local SQLite file, ``sqlite:///mlruns.db``, so
``mlflow ui --backend-store-uri sqlite:///mlruns.db`` shows every run;
``MLFLOW_TRACKING_URI`` or ``--tracking-uri`` choose another.

Example:
  >>> tracker = MlflowTracker("sqlite:///mlruns.db", "demo", run_dir)   # doctest: +SKIP
  >>> simulation.run(cfg, [CsvLogger(run_dir), tracker])                # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
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
from fsjax.callbacks import Callback, append_metrics
from fsjax.extras import require
from fsjax.files import atomic_write
from fsjax.metrics import METRIC_NAMES

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
METRICS_LOG = "metrics_log.csv"
FINAL_METRICS = "final_metrics.csv"
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


def ordered_columns(names) -> list[str]:
    """The ten fairness metrics first, then the rest alphabetically."""
    names = set(names)
    return [n for n in METRIC_NAMES if n in names] + sorted(names - set(METRIC_NAMES))


def _csv_text(rows) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def write_metrics_csv(path: str | os.PathLike, history: Mapping[str, Sequence[float]]) -> None:
    """``round,<metric>...`` with one row per round (values as ``repr``, NaN as ``nan``)."""
    cols = ordered_columns(history)
    rounds = max((len(v) for v in history.values()), default=0)
    rows = [["round", *cols]]
    rows += [[str(r + 1), *(_fmt(history[c][r]) for c in cols)] for r in range(rounds)]
    atomic_write(path, _csv_text(rows))


def write_final_csv(path: str | os.PathLike, history: Mapping[str, Sequence[float]]) -> None:
    """``metric,value`` of the last round (the last finite value for sparse metrics)."""
    rows = [["metric", "value"]]
    for c in ordered_columns(history):
        finite = [v for v in history[c] if not math.isnan(v)]
        rows.append([c, _fmt(finite[-1] if finite else float("nan"))])
    atomic_write(path, _csv_text(rows))


def read_metrics_csv(path: str | os.PathLike) -> dict[str, list[float]]:
    """Reads :func:`write_metrics_csv` output back into ``{metric: values}``.

    Values round-trip exactly (they are written as ``repr``).

    Example:
      >>> import pathlib, tempfile
      >>> path = pathlib.Path(tempfile.mkdtemp()) / METRICS_LOG
      >>> write_metrics_csv(path, {"train_loss": [0.1, float("nan")], "accuracy_mean": [0.5, 2/3]})
      >>> print(path.read_text(), end="")
      round,accuracy_mean,train_loss
      1,0.5,0.1
      2,0.6666666666666666,nan
      >>> read_metrics_csv(path)["accuracy_mean"] == [0.5, 2/3]
      True
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = [c for c in (rows[0] if rows else {}) if c != "round"]
    return {c: [float(r[c]) for r in rows] for c in cols}


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))


class CsvLogger(Callback):
    """Keeps ``metrics_log.csv`` and ``final_metrics.csv`` in ``run_dir`` up to date."""

    def __init__(self, run_dir: str | os.PathLike, history: Mapping[str, Sequence[float]] = None):
        self.run_dir = Path(run_dir)
        self.history = {k: list(v) for k, v in (history or {}).items()}

    def on_start(self, sim) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.history:  # resumed: rounds after the checkpoint are redone
            write_metrics_csv(self.run_dir / METRICS_LOG, self.history)

    def on_round(self, sim, round_index, metrics, state) -> None:
        append_metrics(self.history, metrics)
        write_metrics_csv(self.run_dir / METRICS_LOG, self.history)

    def on_end(self, sim, history) -> None:
        write_final_csv(self.run_dir / FINAL_METRICS, self.history)


class MlflowTracker(Callback):
    """Logs a run to MLflow (see module doc). Call order: after :class:`CsvLogger`.

    Args:
      tracking_uri: the store (see :func:`resolve_tracking_uri`).
      experiment: experiment name (default: the config's ``name``).
      run_dir: the run's output directory (CSVs, figures, ``run.json``).
      run_id: continue this MLflow run (resume) instead of starting one.
      figures: save and log the standard figures at the end.
      tags: extra run tags (e.g. a study's arm and seed).

    Raises:
      fsjax.extras.MissingExtra: MLflow is not installed (the ``track`` extra).
    """

    def __init__(self, tracking_uri: str | None, experiment: str | None,
                 run_dir: str | os.PathLike, run_id: str | None = None, figures: bool = True,
                 tags: Mapping[str, str] | None = None):
        require("track", "MLflow tracking")
        self.uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.figures = figures
        self.tags = dict(tags or {})
        self.client = None

    def on_start(self, sim) -> None:
        import jax
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        check_tracking_uri(self.uri)
        cfg = sim.config
        self.client = MlflowClient(tracking_uri=self.uri)
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = self.experiment or cfg.name
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(
            name, artifact_location=artifact_location(self.uri, name))
        tags = run_tags({"jax_backend": jax.default_backend(),
                "jax_devices": ", ".join(str(d) for d in jax.devices()),
                "engine_mode": f"{sim.mode}" + (f"(chunk={sim.chunk_size})" if sim.chunk_size
                                                 else ""),
                "data": sim.data_description, "run_dir": str(self.run_dir.resolve()),
                **self.tags})
        run = self.client.create_run(exp_id, run_name=self.run_dir.name, tags=tags)
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
        batch = [Metric(k, float(v), now, round_index) for k, v in metrics.items()
                 if not (k == "test_accuracy" and math.isnan(v))]
        self.client.log_batch(self.run_id, metrics=batch)

    def on_end(self, sim, history) -> None:
        from fsjax import plots
        for name in (METRICS_LOG, FINAL_METRICS):
            if (self.run_dir / name).exists():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        if self.figures and history is not None:
            figs = plots.save_run_figures(history.metrics, history.clients,
                                          self.run_dir / "figures", sim.config.name)
            for path in figs:
                self.client.log_artifact(self.run_id, str(path), artifact_path="figures")
        self.client.set_terminated(self.run_id, status="FINISHED")

    def on_error(self, sim, error) -> None:
        if self.client is None or self.run_id is None:
            return
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
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
            points = sorted(client.get_metric_history(run.info.run_id, m), key=lambda p: p.step)
            by_step = {p.step: p.value for p in points}   # a resumed run may repeat steps
            hist[m] = [by_step[s] for s in sorted(by_step)]
        out[label] = hist
    return out


def load_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``run.json`` of a run directory (empty if the run was not tracked)."""
    path = Path(run_dir) / RUN_INFO
    return json.loads(path.read_text()) if path.exists() else {}
