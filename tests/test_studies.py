"""The study drivers end to end in their --quick form (slow: minutes), and
the shared helpers of experiments/study.py (the CUP study's are in test_cup_study.py)."""

import json

import pytest


@pytest.mark.slow
def test_run_grid_seed_major_runs_whole_seeds_first_and_reads_client_counts(tmp_path):
    from experiments import study
    lines = []
    arms = {"random": ["selection.name=random"], "full": ["selection.name=full"]}
    results = study.run_grid(study.REPO / "experiments" / "quick.yaml", arms, {"v": []},
                             [0, 1, 2], out=tmp_path / "grid", experiment="x",
                             tracking_uri="none", extra=["rounds=2"], log=lines.append,
                             metrics=["accuracy_mean"], seed_major=True)
    started = [ln.split("start", 1)[1].strip() for ln in lines if "] start" in ln]
    # Every arm of seed 0, then of seed 1, then of seed 2: one sweep per seed.
    assert started == ["arm=random", "arm=full"] * 3
    assert {a: sorted(r["seed"] for r in runs) for a, runs in results["v"].items()} == \
        {"random": [0, 1, 2], "full": [0, 1, 2]}
    for seed in (0, 1, 2):
        spec = json.loads((tmp_path / "grid" / f"seed{seed}" / "sweep.json").read_text())
        assert [c["seed"] for c in spec["children"]] == [seed, seed]
    # Again: everything is found finished, nothing runs.
    lines.clear()
    again = study.run_grid(study.REPO / "experiments" / "quick.yaml", arms, {"v": []},
                           [0, 1, 2], out=tmp_path / "grid", experiment="x",
                           tracking_uri="none", extra=["rounds=2"], log=lines.append,
                           metrics=["accuracy_mean"], seed_major=True)
    assert not [ln for ln in lines if "] start" in ln]
    assert json.dumps(again) == json.dumps(results)      # (NaN != NaN: compare the JSON)
    run = results["v"]["full"][0]
    assert len(run["metrics"]["accuracy_mean"]) == 2
    assert run["final"]["num_clients"] == 20.0 and run["config"]["rounds"] == 2
    assert 0 < run["final"]["ever_participated"] <= 20


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
