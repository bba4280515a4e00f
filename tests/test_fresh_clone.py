"""A fresh clone with no ../shared beside it: every data input falls back to something that works.

``FSJAX_SHARED`` points at an empty folder, so neither the CIFAR-10 archive nor
the device traces resolve; downloads are off (``never``), as in every test.
"""

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fsjax import config, data, runs
from fsjax.availability import REGISTRY, trace_fallback, traces

REPO = Path(__file__).resolve().parents[1]
TINY = ["rounds=2", "data.n_train=300", "data.n_test=60", "data.download=never",
        "availability.download=never", "model.name=mlp", "partition.num_clients=10",
        "eval.global_every=0", "checkpoint_every=0"]


@pytest.fixture
def no_shared(tmp_path, monkeypatch):
    """No shared folder, no archive, no trace file, an empty cache."""
    empty = tmp_path / "no-shared"
    empty.mkdir()
    monkeypatch.setenv("FSJAX_SHARED", str(empty))
    monkeypatch.setenv("FSJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.delenv("FSJAX_CIFAR10_ZIP", raising=False)
    monkeypatch.delenv("FSJAX_TRACES", raising=False)
    return tmp_path


def test_default_experiment_runs_on_fallbacks_saying_so_once_each(no_shared, caplog):
    caplog.set_level(logging.WARNING, logger="fsjax")
    cfg, run_dir, resuming = runs.resolve_run_config(
        REPO / "experiments" / "cifar10_demo.yaml", TINY, output_dir=no_shared / "out")
    hist = runs.run_in_dir(cfg, run_dir, resuming, no_track=True, quiet=True)
    assert len(hist.metrics["accuracy_mean"]) == 2
    lines = [r.getMessage() for r in caplog.records]
    data_lines = [m for m in lines if "CIFAR-10 not found" in m]
    trace_lines = [m for m in lines if "device traces not found" in m]
    assert len(data_lines) == 1 and "\n" not in data_lines[0]
    assert "GENERATED" in data_lines[0] and "FSJAX_CIFAR10_ZIP" in data_lines[0]
    assert len(trace_lines) == 1 and "\n" not in trace_lines[0]
    assert "Markov" in trace_lines[0] and "FSJAX_TRACES" in trace_lines[0]


@pytest.mark.processes
def test_cli_run_in_a_clone_without_shared(no_shared):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-m", "fsjax", "run", str(REPO / "experiments" / "cifar10_demo.yaml"),
         "--no-track", "--quiet", "--output-dir", str(no_shared / "out"),
         *(a for kv in TINY for a in ("--set", kv))],
        cwd=no_shared, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CIFAR-10 not found" in out.stderr and "device traces not found" in out.stderr


def test_find_traces_order(tmp_path, monkeypatch):
    monkeypatch.setenv("FSJAX_CACHE", str(tmp_path / "cache"))
    shared = tmp_path / "shared"
    shared.mkdir()
    assert trace_fallback.find_traces(env={}, roots=[shared], download=False) is None
    (shared / "device-traces.json").write_text("{}")
    assert trace_fallback.find_traces(env={}, roots=[shared]) == shared / "device-traces.json"
    named = tmp_path / "mine.json"
    named.write_text("{}")
    assert trace_fallback.find_traces(env={"FSJAX_TRACES": str(named)}, roots=[shared]) == named
    with pytest.raises(ValueError, match="FSJAX_TRACES="):
        trace_fallback.find_traces(env={"FSJAX_TRACES": str(tmp_path / "missing.json")})
    cached = tmp_path / "cache" / "device-traces.json"
    cached.parent.mkdir()
    cached.write_text("{}")
    assert trace_fallback.find_traces(env={}, roots=[]) == cached


def test_markov_fallback_rates_match_the_traces():
    # The numbers in the code are the shipped traces' run lengths (1 / mean up, 1 / mean down).
    p_drop, p_return = trace_fallback.MARKOV_P_DROP, trace_fallback.MARKOV_P_RETURN
    assert p_return / (p_drop + p_return) == pytest.approx(0.10, abs=0.01)
    shipped = next((d / "device-traces.json" for d in trace_fallback.shared_data_dirs()
                    if (d / "device-traces.json").is_file()), None)
    if shipped is None:
        pytest.skip("device-traces.json not found")
    from fsjax.availability import load_traces
    m = load_traces(shipped)
    ups, downs = [], []
    for col in m.T:
        cuts = np.flatnonzero(np.diff(col.astype(int))) + 1
        for run in np.split(col, cuts):
            (ups if run[0] else downs).append(len(run))
    assert 1 / np.mean(ups) == pytest.approx(p_drop, abs=1e-3)
    assert 1 / np.mean(downs) == pytest.approx(p_return, abs=1e-3)


def test_traces_auto_without_files_is_markov(no_shared, caplog):
    caplog.set_level(logging.WARNING, logger="fsjax")
    model = traces(num_clients=4, path="auto")
    state = model.init(__import__("jax").random.key(0))
    assert type(state).__name__ == "MarkovState"
    assert sum("device traces not found" in r.getMessage() for r in caplog.records) == 1


def test_explicit_missing_trace_path_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="trace file not found"):
        REGISTRY["traces"](num_clients=2, path=str(tmp_path / "nope.json"))


def test_trace_path_is_relative_to_the_config_file(tmp_path, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    (sub / "exp.yaml").write_text("availability:\n  name: traces\n  path: data/t.json\n")
    monkeypatch.chdir(tmp_path)
    cfg = config.load(sub / "exp.yaml")
    assert cfg.availability.params["path"] == str((sub / "data" / "t.json").resolve())
    auto = sub / "auto.yaml"
    auto.write_text("availability:\n  name: traces\n  path: auto\n")
    assert config.load(auto).availability.params["path"] == "auto"


def test_cifar10_auto_without_sources_is_one_line(no_shared):
    with pytest.raises(ValueError) as err:
        data.load_cifar10("auto", download="never")
    msg = str(err.value)
    assert "\n" not in msg and "data.download=never" in msg and "FSJAX_CIFAR10_ZIP" in msg
    with pytest.raises(ValueError, match="download='sometimes'"):
        data.load_cifar10("auto", download="sometimes")
    with pytest.raises(ValueError, match="data.download"):
        config.load(None, overrides=("data.download=yes",))


def test_no_data_file_is_committed():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    names = tracked.stdout.split()
    assert not [n for n in names if n.endswith(("device-traces.json", "cifar10-jpeg.zip",
                                                "fairsynergy-dl-configs.json"))]
