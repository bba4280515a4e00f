"""Resume never changes a run silently (fsjax.resume, fsjax.runs), and a run's own outputs.

- any config change but ``rounds`` is an error listing the changed keys;
- a ``rounds`` change is recorded (config.yaml, rounds_history.json, MLflow tag);
- resuming a finished run says so and does nothing;
- a run finished after a resume carries no stale ``error`` tag;
- figures and CSVs are written without MLflow, on Ctrl-C too; a run that fails
  before its first round leaves no directory.
"""

import csv
from pathlib import Path

import numpy as np
import pytest

from fsjax import cli, config, resume, runs, tracking
from fsjax.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "experiments" / "quick.yaml")
SMALL = ["rounds=3", "partition.num_clients=6", "selection.clients_per_round=2",
         "data.n_train=300", "data.n_test=60", "model.hidden=[16]", "checkpoint_every=1"]


class _Stop(Callback):
    def __init__(self, at, error=KeyboardInterrupt):
        self.at, self.error = at, error

    def on_start(self, sim):
        if self.at == 0:   # before the first round
            raise self.error("stopped by the test")

    def on_round(self, sim, round_index, metrics, state):
        if round_index == self.at:
            raise self.error("stopped by the test")


def _new_run(tmp_path, extra=(), callbacks=(), **kw):
    cfg, run_dir, resuming = runs.resolve_run_config(QUICK, [*SMALL, *extra],
                                                     output_dir=tmp_path / "out")
    kw.setdefault("no_track", True)
    hist = runs.run_in_dir(cfg, run_dir, resuming, quiet=True, extra_callbacks=callbacks, **kw)
    return run_dir, hist


def test_resume_with_a_changed_key_is_an_error_listing_the_keys(tmp_path, capsys):
    run_dir, _ = _new_run(tmp_path, ["rounds=1"])
    with pytest.raises(runs.UsageError) as err:
        runs.resolve_run_config(None, ["selection.name=fair_select", "local.lr=0.05",
                                       "rounds=4"], resume=run_dir)
    msg = str(err.value)
    assert "local.lr: 0.1 -> 0.05" in msg and "selection.name: random -> fair_select" in msg
    assert "rounds" not in msg.split("changed:")[1]
    # A CONFIG file given with --resume is compared the same way.
    with pytest.raises(runs.UsageError, match="partition.num_clients"):
        runs.resolve_run_config(QUICK, [], resume=run_dir)
    assert cli.main(["run", "--resume", str(run_dir), "--set", "local.lr=0.05",
                     "--no-track", "--quiet"]) == 2
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1 and "local.lr" in line


@pytest.mark.slow
def test_rounds_change_is_recorded(tmp_path):
    run_dir, _ = _new_run(tmp_path, ["rounds=2"])
    cfg, _, resuming = runs.resolve_run_config(None, ["rounds=4"], resume=run_dir)
    hist = runs.run_in_dir(cfg, run_dir, resuming, no_track=True, quiet=True)
    assert len(hist.metrics["accuracy_mean"]) == 4
    assert config.load(run_dir / "config.yaml").rounds == 4
    assert resume.rounds_history(run_dir) == [2, 4]
    assert len(tracking.read_metrics_csv(run_dir / "metrics_log.csv")["accuracy_mean"]) == 4


def test_resuming_a_finished_run_does_nothing(tmp_path, capsys):
    run_dir, _ = _new_run(tmp_path, ["rounds=2"])
    before = (run_dir / "checkpoint.msgpack").read_bytes()
    capsys.readouterr()
    cfg, _, resuming = runs.resolve_run_config(None, [], resume=run_dir)
    assert runs.run_in_dir(cfg, run_dir, resuming, no_track=True) is None
    out = capsys.readouterr()
    assert "complete (2 of 2 rounds)" in out.out and "0/2" not in out.out + out.err
    assert (run_dir / "checkpoint.msgpack").read_bytes() == before
    assert cli.main(["run", "--resume", str(run_dir), "--no-track", "--quiet"]) == 0


@pytest.mark.slow
def test_finished_after_resume_has_no_stale_error_tag_and_records_rounds(tmp_path):
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    with pytest.raises(KeyboardInterrupt):
        _new_run(tmp_path, callbacks=[_Stop(2)], no_track=False, tracking_uri=uri)
    (run_dir,) = (tmp_path / "out").iterdir()
    run_id = tracking.load_run_info(run_dir)["run_id"]
    client = MlflowClient(tracking_uri=uri)
    killed = client.get_run(run_id)
    assert killed.info.status == "KILLED" and "KeyboardInterrupt" in killed.data.tags["error"]
    # Ctrl-C uploaded what existed: the CSV of the rounds done and the figures.
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"metrics_log.csv", "clients.csv", "figures"} <= names
    cfg, _, resuming = runs.resolve_run_config(None, ["rounds=5"], resume=run_dir)
    runs.run_in_dir(cfg, run_dir, resuming, quiet=True, tracking_uri=uri)
    done = client.get_run(run_id)
    assert done.info.status == "FINISHED"
    assert "error" not in done.data.tags
    assert done.data.tags["rounds_history"] == "3,5"


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_no_track_run_writes_figures_and_csvs(tmp_path):
    run_dir, hist = _new_run(tmp_path, ["selection.name=fair_select"])
    figs = sorted(p.name for p in (run_dir / "figures").glob("*.png"))
    assert figs == ["client_accuracy.png", "cumulative_utility.png", "curves.png",
                    "participation.png"]
    rows = _read_csv(run_dir / "clients.csv")
    assert len(rows) == 6
    np.testing.assert_array_equal([int(r["participation"]) for r in rows],
                                  hist.clients["participation"])
    np.testing.assert_allclose([float(r["accuracy"]) for r in rows], hist.clients["accuracy"])
    sel = [int(r["selected"]) for r in rows]
    assert sum(sel) <= 3 * 2 and all(int(r["participation"]) <= s for r, s in zip(rows, sel))
    rounds = len(hist.metrics["accuracy_mean"])
    pi = np.array([float(r["availability"]) for r in rows])
    np.testing.assert_allclose(pi, [int(r["available"]) / rounds for r in rows])
    assert [int(r["debt"]) for r in rows] == [rounds - int(r["participation"]) for r in rows]
    u = np.array([float(r["utility"]) for r in rows])
    np.testing.assert_allclose([float(r["normalised_utility"]) for r in rows], u / pi, rtol=1e-6)
    assert (run_dir / "final_metrics.csv").is_file()


def test_ctrl_c_writes_what_exists(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _new_run(tmp_path, callbacks=[_Stop(2)])
    (run_dir,) = (tmp_path / "out").iterdir()
    assert (run_dir / "figures" / "curves.png").stat().st_size > 1000
    assert len(_read_csv(run_dir / "clients.csv")) == 6
    assert len(tracking.read_metrics_csv(run_dir / "metrics_log.csv")["accuracy_mean"]) == 2


def test_failure_before_the_first_round_leaves_no_directory(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _new_run(tmp_path, callbacks=[_Stop(0)])
    assert list((tmp_path / "out").iterdir()) == []
    # A set-up failure (the data cannot be loaded) too.
    with pytest.raises(ValueError):
        _new_run(tmp_path, ["data.source=" + str(tmp_path / "missing.zip")])
    assert list((tmp_path / "out").iterdir()) == []
