"""The command line and MLflow tracking, run as a user would run them; the packaging."""

import json
import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import jax
import numpy as np
import pytest

from fsjax import checkpoint, cli, metrics, simulation, tracking

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "experiments" / "quick.yaml")


def _fsjax(*args, cwd=REPO, timeout=300):
    return subprocess.run([sys.executable, "-m", "fsjax.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(uri):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)


@pytest.mark.processes
def test_run_logs_everything_and_mlflow_server_answers(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    out = _fsjax("run", QUICK, "--set", "rounds=3", "--tracking-uri", uri,
                 "--output-dir", str(tmp_path / "out"), "--quiet")
    assert out.returncode == 0, out.stderr
    client = _client(uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "quick"]
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    for name in metrics.METRIC_NAMES + ("train_loss", "dropped_updates", "round_seconds"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id,
                                                             tracking.mlflow_key(name))]
        assert steps == [1, 2, 3], name
    assert run.data.params["rounds"] == "3" and run.data.params["selection.name"] == "random"
    assert run.data.tags["engine_mode"].startswith(("chunked", "vmap"))
    assert run.data.tags["jax_backend"] == jax.default_backend()
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics_log.csv", "final_metrics.csv", "figures"} <= files
    figs = [a.path for a in client.list_artifacts(run.info.run_id, "figures")]
    assert len([f for f in figs if f.endswith(".png")]) >= 2
    (run_dir,) = (tmp_path / "out").iterdir()
    logged = tracking.read_metrics_csv(run_dir / "metrics_log.csv")
    assert len(logged["accuracy_mean"]) == 3

    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        body = json.dumps({"experiment_ids": [exp.experiment_id]}).encode()
        deadline = time.time() + 90
        while True:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", data=body,
                    headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=5) as resp:
                    found = json.load(resp)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(1)
        assert [r["info"]["run_id"] for r in found["runs"]] == [run.info.run_id]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


class _Interrupt:
    """Raises at a given round, like a crash or Ctrl-C mid-run."""

    def __init__(self, at, error=KeyboardInterrupt):
        self.at, self.error = at, error

    def on_start(self, sim): ...
    def on_end(self, sim, hist): ...
    def on_error(self, sim, err): ...

    def on_round(self, sim, r, m, state):
        if r == self.at:
            raise self.error("interrupted for the test")


def _args(*argv):
    return cli.build_parser().parse_args(["run", *argv])


@pytest.mark.slow
def test_resume_equals_uninterrupted_run_bit_for_bit(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    common = ("--set", "rounds=5", "--set", "checkpoint_every=2", "--set",
              "availability.name=markov", "--set", "selection.name=fair_select",
              "--tracking-uri", uri, "--quiet")
    full = cli.run_experiment(_args(QUICK, *common, "--output-dir", str(tmp_path / "a")))
    with pytest.raises(KeyboardInterrupt):
        cli.run_experiment(_args(QUICK, *common, "--output-dir", str(tmp_path / "b")),
                           extra_callbacks=[_Interrupt(3)])
    (run_dir,) = (tmp_path / "b").iterdir()
    client = _client(uri)
    run_id = tracking.load_run_info(run_dir)["run_id"]
    assert client.get_run(run_id).info.status == "KILLED"
    resumed = cli.run_experiment(_args("--resume", str(run_dir), "--tracking-uri", uri,
                                       "--quiet"))
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(full.metrics["accuracy_mean"],
                                  resumed.metrics["accuracy_mean"])
    assert client.get_run(run_id).info.status == "FINISHED"
    csv = tracking.read_metrics_csv(run_dir / "metrics_log.csv")
    np.testing.assert_allclose(csv["accuracy_mean"], full.metrics["accuracy_mean"])
    # Both runs as MLflow holds them (the resumed one logged round 3 twice).
    hists = tracking.fetch_histories(uri, experiment="quick", metrics=("accuracy_mean",))
    assert len(hists) == 2
    a, b = (h["accuracy_mean"] for h in hists.values())
    np.testing.assert_allclose(a, full.metrics["accuracy_mean"], rtol=1e-6)
    np.testing.assert_allclose(b, full.metrics["accuracy_mean"], rtol=1e-6)
    png = tmp_path / "cmp.png"
    assert cli.main(["compare", "--experiment", "quick", "--tracking-uri", uri,
                     "--out", str(png)]) == 0
    assert png.stat().st_size > 1000


@pytest.mark.slow
def test_failing_run_is_marked_failed(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    with pytest.raises(RuntimeError):
        cli.run_experiment(_args(QUICK, "--set", "rounds=3", "--tracking-uri", uri, "--quiet",
                                 "--output-dir", str(tmp_path / "o")),
                           extra_callbacks=[_Interrupt(2, RuntimeError)])
    (run,) = _client(uri).search_runs(
        [_client(uri).get_experiment_by_name("quick").experiment_id])
    assert run.info.status == "FAILED" and "RuntimeError" in run.data.tags["error"]


@pytest.mark.parametrize("argv, code, text", [
    (["run", QUICK, "--set", "roundz=3"], 2, "roundz"),
    (["run", QUICK, "--set", "rounds"], 2, "override"),
    (["run", QUICK, "--bogus"], 2, "unrecognized"),
    (["run"], 2, "CONFIG"),
    (["run", "missing.yaml"], 2, "not found"),
    (["frobnicate"], 2, "invalid choice"),
    (["run", QUICK, "--tracking-uri", "http://127.0.0.1:9", "--quiet"], 1, "unreachable"),
])
def test_bad_arguments_one_line_and_exit_code(argv, code, text, capsys):
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip()
    assert text in err and len(err.splitlines()) == 1, err


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert cli.main(["run", QUICK, "--no-track", "--output-dir", str(blocker / "x")]) != 0
    err = capsys.readouterr().err.strip()
    assert "not writable" in err and len(err.splitlines()) == 1


def test_corrupt_checkpoint_is_one_clear_error(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(Path(QUICK).read_text())
    (run_dir / "checkpoint.msgpack").write_bytes(b"\x00garbage" * 10)
    assert cli.main(["run", "--resume", str(run_dir), "--no-track", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "corrupt" in err and len(err.splitlines()) == 1


def test_checkpoint_rejects_a_different_experiment(tmp_path):
    from fsjax import config
    sim = simulation.Simulation(config.load(QUICK))
    checkpoint.save(tmp_path / "c.msgpack", sim.init(), {"accuracy_mean": [0.1]}, {1: 0.2})
    state, hist, test = checkpoint.load(tmp_path / "c.msgpack", sim.init())
    assert hist == {"accuracy_mean": [0.1]} and test == {1: 0.2}
    other = simulation.Simulation(config.load(QUICK, overrides=("model.hidden=[32]",)))
    with pytest.raises(ValueError, match="does not match"):
        checkpoint.load(tmp_path / "c.msgpack", other.init())


@pytest.mark.processes
def test_help_for_each_command():
    for cmd in ("run", "allocate", "compare", "serve", "client", "launch"):
        out = _fsjax(cmd, "--help")
        assert out.returncode == 0 and "usage: fsjax " + cmd in out.stdout, cmd
    out = subprocess.run([sys.executable, "-m", "fsjax", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage: fsjax" in out.stdout, out.stderr


def test_tracking_without_the_track_extra_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)     # as if mlflow were not installed
    assert cli.main(["run", QUICK, "--quiet", "--output-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "fsjax: error: MLflow tracking (off with --no-track) needs the 'track' extra: "
        "pip install 'fsjax[track]'"]


def test_extras_name_what_is_missing(monkeypatch):
    from fsjax import extras

    extras.require("serve", "x")                          # installed here: no error
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(extras.MissingExtra, match=r"^fsjax serve needs the 'serve' extra: "
                       r"pip install 'fsjax\[serve\]'$") as err:
        extras.require("serve", "fsjax serve")
    assert err.value.name == "uvicorn"
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for extra, modules in extras.EXTRAS.items():          # one table, same as pyproject's
        assert extra in meta["optional-dependencies"], extra
        assert len(meta["optional-dependencies"][extra]) == len(modules), extra
    assert "fsjax[track,serve,tfds]" in meta["optional-dependencies"]["all"]
    assert "fsjax[all]" in meta["optional-dependencies"]["dev"]
    core = " ".join(meta["dependencies"])
    assert "jaxopt==0.8.5" in meta["dependencies"]
    assert not any(name in core for name in ("mlflow", "flask", "waitress", "tensorflow"))


@pytest.mark.processes
def test_every_package_is_installed_and_serving_under_fsjax():
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setup["package-dir"] == {"fsjax.serving": "serving"}
    folders = {"fsjax." + str(p.parent.relative_to(REPO / "fsjax")).replace("/", ".")
               for p in (REPO / "fsjax").glob("*/**/__init__.py")}
    folders |= {"fsjax", "fsjax.serving"}
    folders |= {"fsjax.serving." + str(p.parent.relative_to(REPO / "serving")).replace("/", ".")
                for p in (REPO / "serving").glob("*/**/__init__.py")}
    assert sorted(setup["packages"]) == sorted(folders)
    # From outside the repository: only the installed names resolve.
    code = ("import importlib.util, fsjax.serving.server as s; "
            "print(s.create_app.__module__, importlib.util.find_spec('serving'))")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["fsjax.serving.server", "None"], \
        out.stderr[-2000:]


# ------------------------------------------------- the CLI to the README's promise

TINY = ["--set", "rounds=2", "--set", "partition.num_clients=6", "--set",
        "selection.clients_per_round=2", "--set", "data.n_train=300", "--set",
        "data.n_test=60", "--set", "model.hidden=[16]", "--quiet"]


def _one_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.slow
def test_compare_errors_name_what_is_unknown(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "mlruns.db"
    uri = f"sqlite:///{missing}"
    assert cli.main(["compare", "--runs", "deadbeef", "--tracking-uri", uri]) == 1
    assert "no MLflow store" in _one_line(capsys)
    assert not missing.exists() and not missing.parent.exists()   # not created by reading
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    assert cli.main(["run", QUICK, *TINY, "--tracking-uri", uri,
                     "--output-dir", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    assert cli.main(["compare", "--runs", "deadbeef", "--tracking-uri", uri]) == 1
    assert "run 'deadbeef': not found in" in _one_line(capsys)
    assert cli.main(["compare", "--experiment", "cpm", "--tracking-uri", uri]) == 1
    err = _one_line(capsys)
    assert "experiment 'cpm': not found in" in err and "None" not in err
    assert cli.main(["compare", "--experiment", "quick", "--tracking-uri", uri,
                     "--metrics", "acuracy_mean", "--out", str(tmp_path / "c.png")]) == 1
    assert "'acuracy_mean'" in _one_line(capsys)
    assert cli.main(["compare", "--experiment", "quick", "--tracking-uri", uri,
                     "--out", str(tmp_path / "c.png")]) == 0


@pytest.mark.slow
def test_compare_reads_run_directories_and_writes_tables(tmp_path, capsys):
    for sel in ("random", "fair_select"):
        assert cli.main(["run", QUICK, *TINY, "--no-track", "--set", f"selection.name={sel}",
                         "--output-dir", str(tmp_path / "o")]) == 0
    dirs = sorted(str(p) for p in (tmp_path / "o").iterdir())
    capsys.readouterr()
    assert cli.main(["compare", "--dirs", *dirs, "--metrics", "accuracy_mean",
                     "participation_gini", "--out", str(tmp_path / "c.png"),
                     "--csv", str(tmp_path / "t.csv"), "--md", str(tmp_path / "t.md")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000
    import csv
    with open(tmp_path / "t.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["run", "accuracy_mean", "participation_gini"] and len(rows) == 3
    assert "selection.name=fair_select" in (tmp_path / "t.md").read_text()
    final = tracking.read_metrics_csv(Path(dirs[0]) / "metrics_log.csv")["accuracy_mean"][-1]
    assert rows[1][1] == f"{final:.6g}"
    assert cli.main(["compare", "--dirs", str(tmp_path)]) == 1
    assert "not a run directory" in _one_line(capsys)


def test_version_log_level_and_ports(capsys):
    from fsjax import __version__
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"fsjax {__version__}"
    assert cli.main(["--log-level", "loud", "run", QUICK]) == 2
    assert "--log-level" in _one_line(capsys)
    for bad in ("99999", "0", "http"):
        assert cli.main(["serve", QUICK, "--port", bad]) == 2
        assert "--port" in _one_line(capsys)
    assert cli.main(["client", QUICK, "--port", "70000"]) == 2
    assert "65535" in _one_line(capsys)


def test_every_option_has_help():
    import argparse
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [f"{name} {a.dest}" for name, p in sub.choices.items() for a in p._actions
               if not a.help and not isinstance(a, argparse._HelpAction)]
    assert not missing, missing


@pytest.mark.parametrize("override, key", [
    ("availability.p_drop=1.5", "availability.p_drop"),
    ("selection.lam=-1", "selection.lam"),
])
def test_range_errors_name_the_config_key_at_load_time(override, key, capsys):
    from fsjax import config
    extra = {"availability.p_drop=1.5": "availability.name=markov",
             "selection.lam=-1": "selection.name=fair_select"}[override]
    with pytest.raises(ValueError, match=f"config key '{key}'"):
        config.load(QUICK, overrides=(extra, override))
    assert cli.main(["run", QUICK, "--set", extra, "--set", override, "--no-track"]) == 2
    assert key in _one_line(capsys)
