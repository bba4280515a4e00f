"""fsjax sweep: grid and seeds, child names, the summary over seeds, MLflow structure, resume."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fsjax import config, runs, summary, sweep, tracking

QUICK = "experiments/quick.yaml"
ROOT = Path(__file__).resolve().parents[1]


def test_grid_and_seeds_parse_and_name_children_by_the_values_that_differ():
    axes = sweep.parse_grid(["selection.name=random,fair_select", "local.lr=0.1",
                             "model.hidden=[8, 8],[16]"])
    assert axes[2] == ("model.hidden", {"[8, 8]": ["model.hidden=[8, 8]"],
                                        "[16]": ["model.hidden=[16]"]})
    children = sweep.plan(axes, [3, 4])
    assert len(children) == 2 * 1 * 2 * 2
    first = children[0]
    assert first.name == "selection=random hidden=[8, 8] seed=3"   # lr=0.1 is common: left out
    assert first.overrides == ("selection.name=random", "local.lr=0.1", "model.hidden=[8, 8]",
                               "seed=3")
    assert first.point == {"selection.name": "random", "local.lr": "0.1",
                           "model.hidden": "[8, 8]"}
    assert len({c.slug for c in children}) == len(children)
    assert all("/" not in c.slug and " " not in c.slug for c in children)
    assert sweep.point_label(first, axes) == "selection=random hidden=[8, 8]"
    assert [c.name for c in sweep.plan([], [0])] == ["seed=0"]
    assert sweep.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert sweep.parse_seeds("2, 7") == [2, 7]


@pytest.mark.parametrize("grid, seeds, match", [
    (["selection.name"], "0", "expected key=v1,v2"),
    (["selection.name=a,a"], "0", "distinct"),
    (["rounds=1", "rounds=2"], "0", "given twice"),
    ([], "zero", "--seeds 'zero'"),
    ([], "1,1", "distinct seeds"),
])
def test_bad_grid_or_seeds_name_the_option(grid, seeds, match):
    with pytest.raises(ValueError, match=match):
        sweep.parse_grid(grid)
        sweep.parse_seeds(seeds)


def test_bad_grid_value_is_a_usage_error_before_anything_runs(tmp_path):
    axes = sweep.parse_grid(["selection.name=random,best"])
    with pytest.raises(runs.UsageError, match="selection.name"):
        sweep.run_sweep(QUICK, axes, [0], out=tmp_path / "s", no_track=True, say=lambda s: None)
    assert not (tmp_path / "s").exists()


def test_mean_ci_is_student_t_over_seeds():
    values = [0.2, 0.5, 0.35, 0.4]
    mean, half = summary.mean_ci(values)
    t = 3.182446305284263            # t_{0.975, 3}, from a table
    assert mean == pytest.approx(np.mean(values))
    assert half == pytest.approx(t * np.std(values, ddof=1) / 2)
    assert summary.mean_ci([1.0, float("nan"), 3.0])[0] == 2.0
    assert math.isnan(summary.mean_ci([])[0])


def _fake_sweep(out, histories):
    """A finished sweep directory with given per-child histories, no training."""
    axes = sweep.parse_grid(["selection.name=a,b"])
    seeds = [0, 1, 2]
    children = sweep.plan(axes, seeds)
    spec = {"axes": [list(a) for a in axes], "seeds": seeds, "metrics": ["m"], "last": 2,
            "tracking_uri": None, "parent_run_id": None,
            "children": [dict(c._asdict(), dir=f"runs/{c.slug}") for c in children]}
    out.mkdir(parents=True)
    (out / sweep.SWEEP_FILE).write_text(json.dumps(spec))
    for c, hist in zip(children, histories):
        d = out / "runs" / c.slug
        d.mkdir(parents=True)
        tracking.write_metrics_csv(d / tracking.METRICS_LOG, hist)
        (d / sweep.DONE).write_text(json.dumps({"seconds": 1.0}))
    return children


def test_summary_files_hold_final_and_last_n_mean_with_ci(tmp_path):
    nan = float("nan")
    hists = [{"m": [0.0, 1.0, 2.0]}, {"m": [0.0, 2.0, 4.0]}, {"m": [0.0, 3.0, nan]},
             {"m": [1.0, 1.0, 1.0]}, {"m": [1.0, 1.0, 1.0]}, {"m": [1.0, 1.0, 1.0]}]
    _fake_sweep(tmp_path / "s", hists)
    sweep.write_summary(tmp_path / "s", say=lambda s: None)
    import csv
    rows = list(csv.DictReader(open(tmp_path / "s" / "summary.csv")))
    a = [r for r in rows if r["point"] == "selection=a"][0]
    finals = [2.0, 4.0, 3.0]                       # the last finite value of each seed
    lasts = [1.5, 3.0, 1.5]                        # the mean of the last 2 finite values
    t2 = 4.302652729911275                         # t_{0.975, 2}
    assert float(a["final_mean"]) == pytest.approx(3.0)
    assert float(a["final_ci95"]) == pytest.approx(t2 * np.std(finals, ddof=1) / np.sqrt(3))
    assert float(a["last_mean"]) == pytest.approx(np.mean(lasts))
    assert float(a["last_ci95"]) == pytest.approx(t2 * np.std(lasts, ddof=1) / np.sqrt(3))
    b = [r for r in rows if r["point"] == "selection=b"][0]
    assert (float(b["final_mean"]), float(b["final_ci95"]), b["n"]) == (1.0, 0.0, "3")
    md = (tmp_path / "s" / "summary.md").read_text()
    assert "| selection=a | 3 | 3.0000 ± " in md and "m (last 2)" in md
    assert (tmp_path / "s" / "figures" / "sweep_m.png").stat().st_size > 1000


def test_factory_defaults_are_in_the_config_params_and_round_trip(tmp_path):
    cfg = config.load(QUICK, ("selection.name=fair_select", "availability.name=markov",
                              "availability.p_drop=0.2"))
    assert cfg.selection.params == {"lam": 0.5, "mu": 1.0, "coverage": True}
    assert cfg.availability.params["p_return"] == 0.3
    assert cfg.availability.params["p_drop"] == 0.2
    flat = config.flatten(cfg)
    assert {"selection.lam", "selection.mu", "selection.coverage", "availability.p_return",
            "model.hidden"} <= set(flat)
    path = tmp_path / "c.yaml"
    path.write_text(config.dump(cfg))
    assert config.load(path) == cfg


def test_default_run_name_puts_the_overrides_first():
    cfg = config.load(QUICK)
    assert runs.default_run_name(cfg, ["selection.name=fair_select", "local.lr=0.05"]) == \
        "selection=fair_select lr=0.05 | quick"
    assert runs.default_run_name(cfg).startswith("quick ")
    tags = runs.run_identity_tags(["rounds=2"], argv=["/x/bin/fsjax", "run", "a b.yaml"])
    assert tags == {"fsjax.command": "fsjax run 'a b.yaml'", "fsjax.overrides": "rounds=2"}


def _fsjax(*args, timeout=900):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "fsjax", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.processes
def test_sweep_with_two_workers_nests_runs_and_resumes_only_what_is_missing(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    out = tmp_path / "sweep"
    args = ("sweep", QUICK, "--grid", "selection.name=random,fair_select", "--seeds", "0-1",
            "--set", "rounds=2", "--set", "availability.name=markov", "--workers", "2",
            "--out", str(out), "--tracking-uri", uri, "--last", "2")
    first = _fsjax(*args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "0 finished, 0 to resume, 4 to start" in first.stdout
    assert "runs?workflowType=machine_learning" in first.stdout

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("quick")
    assert "fsjax" in exp.tags["mlflow.note.content"]
    all_runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and len(all_runs) == 5
    assert {r.info.status for r in all_runs} == {"FINISHED"}
    assert {r.info.run_name for r in children} == {
        f"selection={s} seed={n}" for s in ("random", "fair_select") for n in (0, 1)}
    for run in children:
        tags, params = run.data.tags, run.data.params
        assert "rounds=2" in tags["fsjax.overrides"]
        assert f"selection.name={tags['selection.name']}" in tags["fsjax.overrides"]
        assert tags["fsjax.command"].startswith("fsjax sweep")
        # Every factory default is a param: the markov rates, fair_select's knobs.
        assert params["availability.p_return"] == "0.3"
        if tags["selection.name"] == "fair_select":
            assert {params["selection.lam"], params["selection.mu"],
                    params["selection.coverage"]} == {"0.5", "1.0", "True"}
        keys = set(run.data.metrics)
        assert {"accuracy/accuracy_mean", "fairness/participation_gini",
                "fairness/accuracy_jain"} <= keys
        assert "accuracy_mean" not in keys and "participation_gini" not in keys
        info = tracking.load_run_info(out / "runs" / run.info.run_name.replace(" ", "-"))
        assert info == {**info, "run_id": run.info.run_id, "tracking_uri": uri}
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.csv", "summary.md", "figures"} <= parent_files
    md = (out / "summary.md").read_text()
    assert "| selection=random | 2 |" in md and "±" in md

    # The same command again: nothing to train, the same summary.
    second = _fsjax(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "4 finished, 0 to resume, 0 to start" in second.stdout
    assert len(client.search_runs([exp.experiment_id])) == 5

    # Interrupted children: one with its checkpoint (resumed in its MLflow run),
    # one without (restarted; its old MLflow run is deleted). The others stay as they are.
    resumed, restarted, *kept = sorted((out / "runs").iterdir())
    (resumed / sweep.DONE).unlink()
    (restarted / sweep.DONE).unlink()
    (restarted / runs.CHECKPOINT).unlink()
    old_id = tracking.load_run_info(restarted)["run_id"]
    before = {d: (d / tracking.METRICS_LOG).stat().st_mtime_ns for d in kept}
    third = _fsjax(*args)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "2 finished, 1 to resume, 1 to start" in third.stdout
    assert {d: (d / tracking.METRICS_LOG).stat().st_mtime_ns for d in kept} == before
    assert (resumed / sweep.DONE).is_file() and (restarted / sweep.DONE).is_file()
    live = client.search_runs([exp.experiment_id])
    assert len(live) == 5 and old_id not in {r.info.run_id for r in live}
    assert {r.info.status for r in live} == {"FINISHED"}

    # --from redoes the summary without training.
    md = (out / "summary.md").read_text()
    (out / "summary.md").unlink()
    again = _fsjax("sweep", "--from", str(out), "--no-track")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "summary.md").read_text() == md
