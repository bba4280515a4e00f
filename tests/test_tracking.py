"""Run files: the CSVs, the atomic writer, checkpoints and the MLflow callback."""

import math
import os
import stat
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsjax import checkpoint, config, files, tracking

QUICK = "experiments/quick.yaml"


def test_metrics_csv_keeps_its_format_and_round_trips_exactly(tmp_path):
    history = {"train_loss": [0.25, float("nan"), 1e-9], "accuracy_mean": [0.1, 1 / 3, 0.7],
               "selected": [5.0, 5.0, 4.0]}
    path = tmp_path / "metrics_log.csv"
    tracking.write_metrics_csv(path, history)
    # The format written by hand before the csv module: repr floats, "nan", "\n" endings.
    assert path.read_bytes() == (
        b"round,accuracy_mean,selected,train_loss\n"
        b"1,0.1,5.0,0.25\n"
        b"2,0.3333333333333333,5.0,nan\n"
        b"3,0.7,4.0,1e-09\n")
    back = tracking.read_metrics_csv(path)
    assert back["accuracy_mean"] == history["accuracy_mean"]
    assert math.isnan(back["train_loss"][1]) and back["train_loss"][2] == 1e-9
    tracking.write_final_csv(tmp_path / "final.csv", history)
    assert (tmp_path / "final.csv").read_text() == (
        "metric,value\naccuracy_mean,0.7\nselected,4.0\ntrain_loss,1e-09\n")


def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "deep" / "file.txt"
    files.atomic_write(path, "old")
    with pytest.raises(RuntimeError):
        with files.atomic_writer(path) as f:
            f.write(b"half of the new")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in path.parent.iterdir()] == ["file.txt"]
    files.atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    # Same permissions as a file opened normally (mkstemp alone would give 0600).
    (tmp_path / "plain.txt").write_text("x")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(
        (tmp_path / "plain.txt").stat().st_mode)


def test_checkpoint_loads_into_a_shape_template_and_rejects_a_mismatch(tmp_path):
    state = {"params": {"w": jnp.arange(6.0).reshape(2, 3)}, "round": jnp.int32(4),
             "key": jax.random.PRNGKey(1)}
    path = tmp_path / "c.msgpack"
    checkpoint.save(path, state, {"accuracy_mean": [0.5, float("nan")]}, {2: 0.25})
    restored, history, test_acc = checkpoint.load(path, jax.eval_shape(lambda: state))
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)
        assert np.asarray(a).dtype == b.dtype
    assert history["accuracy_mean"][0] == 0.5 and math.isnan(history["accuracy_mean"][1])
    assert test_acc == {2: 0.25}
    wrong = jax.eval_shape(lambda: {**state, "params": {"w": jnp.zeros((3, 3))}})
    with pytest.raises(ValueError, match="does not match"):
        checkpoint.load(path, wrong)
    assert [p.name for p in tmp_path.iterdir()] == ["c.msgpack"]


def test_tracking_without_the_track_extra_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)   # import mlflow -> ModuleNotFoundError
    with pytest.raises(ImportError, match=r"'track' extra: pip install 'fsjax\[track\]'"):
        tracking.MlflowTracker(None, "x", tmp_path)
    with pytest.raises(ImportError, match=r"'track' extra"):
        tracking.fetch_histories(f"sqlite:///{tmp_path}/m.db", experiment="x")
    tracking.CsvLogger(tmp_path).on_round(None, 1, {"accuracy_mean": 0.5}, None)  # no mlflow
    assert tracking.read_metrics_csv(tmp_path / "metrics_log.csv") == {"accuracy_mean": [0.5]}


def test_mlflow_tracker_logs_every_param_metric_and_the_git_commit(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    cfg = config.load(QUICK)
    # More params than one MLflow request takes (100): MLflow's log_batch splits them.
    many = {f"p{i:03d}": i for i in range(150)}
    monkeypatch.setattr(tracking.config_lib, "flatten", lambda c: many)
    sim = types.SimpleNamespace(config=cfg, mode="vmap", chunk_size=None, data_description="d")
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    tracker = tracking.MlflowTracker(uri, "t", tmp_path / "run", figures=False,
                                     tags={"arm": "a"}, run_name="lr=0.5 | quick")
    tracker.on_start(sim)
    tracker.on_round(sim, 1, {"accuracy_mean": 0.5, "test_accuracy": float("nan")}, None)
    tracker.on_end(sim, None)
    run = MlflowClient(tracking_uri=uri).get_run(tracker.run_id)
    assert run.data.params == {k: str(v) for k, v in many.items()}
    assert run.data.metrics == {"accuracy/accuracy_mean": 0.5}     # grouped by prefix
    assert run.info.run_name == "lr=0.5 | quick"
    exp = MlflowClient(tracking_uri=uri).get_experiment(tracker.experiment_id)
    assert exp.name == "t" and "fairness/*" in exp.tags["mlflow.note.content"]
    assert tracking.runs_table_url(tracker.experiment_id).endswith(
        f"/#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning")
    assert run.data.tags["arm"] == "a" and run.data.tags["engine_mode"] == "vmap"
    if tracking.git_commit() != "unknown":   # a checkout, not an unpacked archive
        assert run.data.tags[MLFLOW_GIT_COMMIT] == tracking.git_commit()
    assert run.info.status == "FINISHED"
    assert tracking.load_run_info(tmp_path / "run")["run_id"] == tracker.run_id
    assert os.path.exists(tmp_path / "run" / "config.yaml")
