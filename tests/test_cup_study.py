"""The CUP study's statistics (CIs, paired differences), tables and figures on
synthetic results, and the driver end to end in its --quick form (slow)."""

import json
import math

import numpy as np
import pytest

from experiments import cup_study, study

NAN = float("nan")
# Two-sided 95% Student t quantiles from a printed table.
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 9: 2.2622}


def _run(seed, metrics, **final_extra):
    """A run as study.run_grid returns it, its final values being the last ones."""
    final = {k: [v for v in vals if not math.isnan(v)][-1] for k, vals in metrics.items()}
    final.update(final_extra)
    return dict(seed=seed, seconds=10.0 + seed, metrics=metrics, final=final)


def _arm(values_by_seed, metric="m", rounds=4):
    """Runs whose ``metric`` ramps to the given final value per seed."""
    return [_run(s, {metric: list(np.linspace(0, v, rounds))}) for s, v in
            values_by_seed.items()]


def _loop_ci(values):
    """Mean and 95% t half-width written out with loops."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, T975[n - 1] * math.sqrt(var) / math.sqrt(n)


@pytest.mark.parametrize("df", sorted(T975))
def test_t_quantile_matches_the_printed_table(df):
    assert study.t_quantile(df) == pytest.approx(T975[df], abs=1e-4)


def test_t_quantile_rejects_zero_df():
    with pytest.raises(ValueError, match="df=0"):
        study.t_quantile(0)


@pytest.mark.parametrize("values", [[1.0, 2.0, 3.0], [0.31, 0.28, 0.35, 0.30, 0.29],
                                    [5.0, -1.0], [0.1] * 3 + [0.4]])
def test_mean_ci_matches_the_loop_formula(values):
    mean, half, n = study.mean_ci(values)
    want_mean, want_half = _loop_ci(values)
    assert n == len(values)
    assert mean == pytest.approx(want_mean, rel=1e-12)
    assert half == pytest.approx(want_half, rel=1e-4)


def test_mean_ci_hand_number_nan_and_one_value():
    mean, half, n = study.mean_ci([1.0, 2.0, 3.0, NAN])        # NaN dropped
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
    m1, h1, n1 = study.mean_ci([0.7])
    assert m1 == 0.7 and math.isnan(h1) and n1 == 1
    m0, h0, n0 = study.mean_ci([NAN])
    assert math.isnan(m0) and math.isnan(h0) and n0 == 0
    assert study.mean_ci([2.0, 2.0, 2.0])[1] == 0.0                # no spread: zero width


def test_paired_difference_hand_numbers_and_pairing_by_seed():
    arm = _arm({2: 4.0, 0: 3.0, 1: 5.0, 7: 9.0})              # seed 7 has no partner
    ref = _arm({0: 1.0, 1: 2.0, 2: 2.0})
    d = study.paired_difference(arm, ref, "m")                 # differences 2, 3, 2
    assert d["n"] == 3
    assert d["mean"] == pytest.approx(7 / 3)
    assert d["half"] == pytest.approx(4.3027 * math.sqrt(1 / 3) / math.sqrt(3), abs=1e-4)
    assert d["low"] == pytest.approx(d["mean"] - d["half"])
    assert d["high"] == pytest.approx(d["mean"] + d["half"])
    assert d["distinguishable"]


def test_paired_difference_removes_what_the_seed_moves_in_both_arms():
    # Seeds shift both arms alike: unpaired intervals overlap, the paired one excludes 0.
    base = {0: 0.20, 1: 0.40, 2: 0.30, 3: 0.50, 4: 0.25}
    arm = _arm({s: v + 0.02 + 0.001 * s for s, v in base.items()})
    ref = _arm(base)
    ma, ha, _ = study.mean_ci([r["final"]["m"] for r in arm])
    mr, hr, _ = study.mean_ci([r["final"]["m"] for r in ref])
    assert ma - ha < mr + hr                                       # unpaired: overlap
    d = study.paired_difference(arm, ref, "m")
    assert d["distinguishable"] and d["low"] > 0
    assert d["mean"] == pytest.approx(0.022)


def test_paired_difference_not_distinguishable_cases():
    ref = _arm({0: 1.0, 1: 1.0, 2: 1.0})
    mixed = study.paired_difference(_arm({0: 2.0, 1: 0.5, 2: 1.1}), ref, "m")
    assert mixed["low"] < 0 < mixed["high"] and not mixed["distinguishable"]
    same = study.paired_difference(ref, ref, "m")                  # identical: width 0 at 0
    assert same["mean"] == 0 and same["half"] == 0 and not same["distinguishable"]
    one = study.paired_difference(_arm({0: 5.0}), ref, "m")        # one pair: no interval
    assert one["n"] == 1 and math.isnan(one["half"]) and not one["distinguishable"]
    missing = study.paired_difference(ref, ref, "other")           # metric nobody logged
    assert missing["n"] == 0 and not missing["distinguishable"]


def test_paired_difference_with_a_window_uses_last_rounds():
    arm = [_run(s, {"m": [0.0, v, 1.0]}) for s, v in [(0, 3.0), (1, 5.0)]]
    ref = [_run(s, {"m": [0.0, 1.0, 1.0]}) for s in (0, 1)]
    d = study.paired_difference(arm, ref, "m", window=2)          # (3+1)/2-1, (5+1)/2-1
    assert d["mean"] == pytest.approx(1.5) and d["n"] == 2
    assert study.paired_difference(arm, ref, "m")["mean"] == 0.0   # final values equal


def _results():
    """Synthetic study results: 3 arms x 3 seeds, two metrics, 4 rounds."""
    def arm(acc, gap):
        return [_run(s, {"accuracy_global": [0.1, 0.2, 0.3, acc[s]],
                         "selection_gap": [1.0, 2.0, 3.0, gap[s]],
                         "available": [8.0, 10.0, 12.0, 10.0]},
                     ever_available=40.0 + s, ever_participated=20.0, num_clients=100.0)
                for s in range(3)]
    cfg = {"model": {"name": "mlp", "hidden": [256]}, "data": {"test_subset": 0}}
    results = {"main": {"cup": arm([0.40, 0.42, 0.44], [4.0, 5.0, 6.0]),
                        "uniform_available": arm([0.40, 0.40, 0.40], [8.0, 9.0, 10.0]),
                        "qffl": arm([0.30, 0.50, 0.40], [8.0, 9.0, 10.0])}}
    results["main"]["cup"][0]["config"] = cfg
    return results


def test_ci_table_cells_are_mean_and_t_half_width():
    table = study.ci_table(_results()["main"], ["accuracy_global", "selection_gap"])
    lines = table.splitlines()
    assert lines[0] == "| arm | seeds | accuracy_global | selection_gap |"
    half = 4.3027 * 0.02 / math.sqrt(3)                            # std 0.02 of .40,.42,.44
    assert f"| cup | 3 | 0.420 ± {half:.3f} | 5.000 ± {4.3027 / math.sqrt(3):.3f} |" in lines
    assert "| uniform_available | 3 | 0.400 ± 0.000 | 9.000 ± 2.484 |" in lines
    # Mean over all rounds (the per-round counts): 10 in every run.
    counts = study.ci_table(_results()["main"], ["available"], digits=2,
                            window=cup_study.ALL_ROUNDS)
    assert "| cup | 3 | 10.00 ± 0.00 |" in counts


def test_paired_table_marks_distinguishable_cells_and_skips_the_reference():
    arms = _results()["main"]
    table = study.paired_table(arms, ["accuracy_global", "selection_gap"], "uniform_available")
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert set(rows) == {"cup", "qffl"}
    # cup: accuracy differences 0, .02, .04 -> +0.020 ± 0.050 (includes 0); gap -4 each.
    assert rows["cup"] == ("| cup | 3 | +0.020 ± 0.050 | **-4.000 ± 0.000** |")
    assert rows["qffl"] == "| qffl | 3 | +0.000 ± 0.248 | +0.000 ± 0.000 |"
    with pytest.raises(ValueError, match="reference arm 'fedavg'"):
        study.paired_table(arms, ["selection_gap"], "fedavg")


def test_reading_names_distinguishable_arms_and_the_rest():
    arms = _results()["main"]
    text = cup_study.reading(arms, ["accuracy_global", "selection_gap"])
    assert "- `accuracy_global`: no arm is distinguishable from uniform_available." in text
    assert ("- `selection_gap`: cup -4.000 [-4.000, -4.000]; not distinguishable: qffl."
            in text)


def test_variant_label_counts_rounds_and_seeds():
    arms = _results()["main"]
    assert cup_study.variant_label("main", arms) == "T=4, 3 seeds"
    arms["cup"] = arms["cup"][:1]
    assert cup_study.variant_label("main", arms) == "T=4, 1-3 seeds"
    assert cup_study.variant_label("main", {"a": arms["cup"]}) == "T=4, 1 seed"


def test_reading_with_one_seed_says_there_are_no_intervals():
    arms = {k: v[:1] for k, v in _results()["main"].items()}
    assert cup_study.reading(arms, ["selection_gap"]) == (
        "- 1 seed in common with uniform_available: no intervals, nothing can be called "
        "distinguishable.\n")


def test_report_has_every_table_the_differences_and_the_time():
    results = _results()
    results["long"] = {k: results["main"][k] for k in ("cup", "uniform_available")}
    text = cup_study.report(results, dict(wall_s=600.0, main_s=420.0, long_s=180.0))
    assert text.startswith("15 runs, wall time 10.0 min on this machine")
    assert "main grid 7.0 min, long runs 3.0 min" in text
    for needle in ("**Main grid (T=4, 3 seeds), final round**",
                   "**Paired difference from uniform_available (T=4, 3 seeds), final round**",
                   "**Long runs (T=4, 3 seeds), final round**",
                   "**Long runs: paired difference from uniform_available**",
                   "**Clients ever available / ever participating** (of 100)",
                   "| cup | 3 | 41.0 ± 2.5 | 20.0 ± 0.0 |",
                   "**What is distinguishable**", "**Differences from the study's setting**",
                   "trained from scratch", "**Time per arm**",
                   "a small MLP (hidden layers [256]) on the raw pixels",
                   "all 10,000 test images, as the study",
                   "| cup | 3 | 11 | 2.75 |"):        # seconds 10, 11, 12 over 4 rounds
        assert needle in text, needle
    partial = cup_study.report(results, None, planned=54)
    assert partial.startswith("**Partial results: 15 of the 54 planned runs had finished**")
    assert not cup_study.report(results, None, planned=15).startswith("**Partial")
    # Redone from results (no wall time): the runs' summed seconds.
    assert cup_study.report(results, None).startswith("15 runs, the runs' times sum to")


def test_differences_follow_the_runs_config():
    results = _results()
    results["main"]["cup"][0]["config"] = {"model": {"name": "cnn"},
                                           "data": {"test_subset": 2000}}
    text = cup_study.differences(results)
    assert "fsjax's CNN" in text and "2,000 test images (`data.test_subset`" in text


def test_ci_figures_and_panels_write_pngs(tmp_path):
    arms = _results()["main"]
    paths = study.ci_figures(arms, ["accuracy_global", "selection_gap", "nobody"],
                             tmp_path, "cup_")
    assert [p.name for p in paths] == ["cup_accuracy_global.png", "cup_selection_gap.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    panel = study.ci_panels(arms, ["accuracy_global", "selection_gap"], tmp_path / "p.png")
    assert panel.stat().st_size > 1000


def test_client_counts_reads_new_and_old_columns(tmp_path):
    new = tmp_path / "new.csv"
    new.write_text("client,available_count,participated_count\n0,3,1\n1,0,0\n2,2,0\n")
    assert study.client_counts(new) == dict(ever_available=2.0, ever_participated=1.0,
                                            num_clients=3.0)
    old = tmp_path / "old.csv"
    old.write_text("client,participation,available\n0,0,0\n1,2,5\n")
    assert study.client_counts(old) == dict(ever_available=1.0, ever_participated=1.0,
                                            num_clients=2.0)
    assert study.client_counts(tmp_path / "none.csv") == {}


def test_arms_are_valid_configs():
    from fsjax import config
    for name, overrides in cup_study.ARMS.items():
        cfg = config.load(cup_study.BASE, overrides)
        assert cfg.rounds == 50 and cfg.partition.num_clients == 100, name
        assert cfg.selection.clients_per_round == 10 and cfg.local.clip_norm == 5.0
    assert config.load(cup_study.BASE, cup_study.ARMS["cup"]).aggregation.name == \
        "horvitz_thompson"
    assert set(cup_study.LONG_ARMS) <= set(cup_study.ARMS)
    assert cup_study.REFERENCE in cup_study.ARMS


@pytest.mark.slow
def test_cup_study_quick_end_to_end(tmp_path):
    out = tmp_path / "cup"
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    assert cup_study.main(["--quick", "--out", str(out), "--tracking-uri", uri]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"main", "long"}
    assert set(results["main"]) == set(cup_study.ARMS)
    assert set(results["long"]) == set(cup_study.LONG_ARMS)
    for name, runs in results["main"].items():
        assert [r["seed"] for r in runs] == list(cup_study.QUICK_SEEDS), name
        for metric in cup_study.COLUMNS:
            assert len(runs[0]["metrics"][metric]) == 3, (name, metric)
    for runs in results["long"].values():
        assert len(runs[0]["metrics"]["accuracy_global"]) == cup_study.QUICK_LONG_ROUNDS
    table = (out / "table.md").read_text()
    assert all(name in table for name in cup_study.ARMS)
    assert "**Paired difference from uniform_available" in table
    for metric in cup_study.COLUMNS:
        assert (out / "figures" / f"cup_{metric}.png").stat().st_size > 1000
    assert (out / "figures" / "cup_main.png").is_file()
    assert (out / "main" / "seed0" / "summary.md").is_file()       # each seed's sweep summary
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("cup_study_quick")
    every = client.search_runs([exp.experiment_id])
    parents = [r for r in every if "mlflow.parentRunId" not in r.data.tags]
    # One sweep (parent run) per seed of each grid: 1 main + 1 long.
    assert len(parents) == 2 and {r.info.status for r in every} == {"FINISHED"}
    assert len(every) == 2 + len(cup_study.ARMS) + len(cup_study.LONG_ARMS)
    # The study read from its directory (as while it runs): the same as results.json.
    assert json.dumps(cup_study.load(out)) == json.dumps(results)
    # Redone from results.json without training: the same tables, and the runs' time.
    (out / "table.md").unlink()
    assert cup_study.main(["--quick", "--out", str(out), "--tracking-uri", "none",
                           "--from-results", str(out / "results.json")]) == 0
    assert (out / "table.md").read_text().split("\n", 1)[1] == table.split("\n", 1)[1]
