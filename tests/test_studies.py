"""The study drivers end to end in their --quick form (slow: minutes)."""

import json

import pytest

from fsjax import metrics


@pytest.mark.slow
def test_cpp_study_quick_writes_every_strategy_and_metric(tmp_path):
    from experiments import cpp_study
    out = tmp_path / "cpp"
    assert cpp_study.main(["--quick", "--out", str(out),
                           "--tracking-uri", f"sqlite:///{tmp_path}/mlruns.db"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == set(cpp_study.VARIANTS)
    table = (out / "table.md").read_text()
    for variant, arms in results.items():
        assert set(arms) == set(cpp_study.STRATEGIES)
        for name, runs in arms.items():
            assert name in table
            for metric in metrics.METRIC_NAMES:
                assert len(runs[0]["metrics"][metric]) == 4, (variant, name, metric)
    for metric in metrics.METRIC_NAMES:
        assert (out / "figures" / f"cpp_{metric}.png").stat().st_size > 1000
        assert metric in table
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    exp = client.get_experiment_by_name("cpp_study_quick")
    every = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in every if "mlflow.parentRunId" not in r.data.tags]
    runs = [r for r in every if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 10 and {r.info.status for r in every} == {"FINISHED"}
    assert {r.data.tags["arm"] for r in runs} == set(cpp_study.STRATEGIES)
    assert {r.data.tags["variant"] for r in runs} == set(cpp_study.VARIANTS)
    assert (out / "summary.md").is_file()                      # the sweep's summary over seeds
    # The report redone from results.json, without training: same tables.
    (out / "table.md").unlink()
    assert cpp_study.main(["--quick", "--out", str(out), "--tracking-uri", "none",
                           "--from-results", str(out / "results.json")]) == 0
    redone = (out / "table.md").read_text()
    assert redone.split("\n\n", 1)[1] == table.split("\n\n", 1)[1]   # all but the time


@pytest.mark.slow
def test_fairsynergy_loop_quick_compares_allocations(tmp_path):
    from experiments import fairsynergy_loop
    out = tmp_path / "loop"
    assert fairsynergy_loop.main(["--quick", "--out", str(out), "--tracking-uri", "none"]) == 0
    results = json.loads((out / "results.json").read_text())
    (arms,) = results.values()
    assert set(arms) == set(fairsynergy_loop.ARMS)
    steps = {name: sum(runs[0]["metrics"]["local_steps"]) for name, runs in arms.items()}
    assert len(set(steps.values())) == 1, steps          # same total compute in every arm
    table = (out / "table.md").read_text()
    assert all(name in table for name in arms)


@pytest.mark.slow
def test_gradient_tradeoff_runs(tmp_path, capsys):
    from experiments.fairsynergy import tradeoff
    assert tradeoff.main(["--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    err = float(text.split("max relative error")[1].split()[0])
    assert err < 1e-3
    assert (tmp_path / "tradeoff.png").stat().st_size > 1000


def test_markdown_table_final_and_window_values():
    from experiments import study
    nan = float("nan")
    runs = [dict(final={"m": 4.0}, metrics={"m": [1.0, 2.0, nan, 4.0]}),
            dict(final={"m": 6.0}, metrics={"m": [3.0, 4.0, 5.0, 6.0]})]
    assert study.run_value(runs[0], "m") == 4.0
    assert study.run_value(runs[0], "m", window=2) == 3.0        # mean of 2, 4 (NaN skipped)
    assert study.run_value(runs[1], "m", window=3) == 5.0
    final = study.markdown_table({"v": {"a": runs}}, ["m"])
    assert "| a | 5.000 ± 1.000 |" in final                        # mean/std of 4 and 6
    windowed = study.markdown_table({"v": {"a": runs}}, ["m"], window=2)
    assert "| a | 4.250 ± 1.250 |" in windowed                     # of 3.0 and 5.5
