"""The cumulative-utility-parity (CPP) study on real CIFAR-10 (REFERENCE.md section B).

Runs every selection strategy (fair_select, random/PSP, aw_psp,
power_of_choice, full participation as the upper bound) x 3 seeds x two
availability variants (the shipped phone traces, and the same traces with
correlated failures: devices whose availability series correlate above 0.35
drop out together), all tracked in one MLflow experiment. Writes one comparison
figure per metric (mean and min-max band over seeds) and the table of the final
ten metrics into ``experiments/README.md``.

    python -m experiments.cpp_study            # the full study (about an hour on 2 CPU cores)
    python -m experiments.cpp_study --quick    # a few minutes: 30 clients, 2 a round, 4 rounds, 1 seed
    python -m experiments.cpp_study --from-results experiments/cpp_out/results.json  # tables, figures
"""

from __future__ import annotations

from experiments import study

BASE = study.REPO / "experiments" / "cpp_study.yaml"
TRACES = "../shared/data/device-traces.json"

STRATEGIES = {
    "fair_select": ["selection.name=fair_select", "selection.lam=0.5"],
    "random": ["selection.name=random"],
    "aw_psp": ["selection.name=aw_psp"],
    "power_of_choice": ["selection.name=power_of_choice", "selection.d=10"],
    "full": ["selection.name=full"],
}
VARIANTS = {
    "traces": [],
    # Replaces the whole availability section (the traces become the base model).
    "correlated": [f"availability={{name: correlated, base: traces, base_params: {{path: "
                   f"{TRACES}, slot_minutes: 60, rule: charging_wifi}}, threshold: 0.35, "
                   "p_group_drop: 0.2}"],
}
WINDOW = 10
WINDOW_COLUMNS = ("accuracy_mean", "accuracy_jain", "accuracy_variance", "class_loss_variance")
QUICK = ["rounds=4", "partition.num_clients=30", "selection.clients_per_round=2",
         "local.steps=3", "partition.max_test_per_client=10", "data.test_subset=500",
         "eval.global_every=0"]


def main(argv=None) -> int:
    args = study.parser(__doc__.splitlines()[0], "cpp_out").parse_args(argv)
    results, out, wall = study.run_or_load(args, "cpp_study", "cpp_out", BASE, STRATEGIES,
                                           VARIANTS, QUICK if args.quick else ())
    figs = study.comparison_figures(results, study.FAIRNESS_COLUMNS, out / "figures", "cpp_")
    table = study.markdown_table(results, study.FAIRNESS_COLUMNS)
    steady = study.markdown_table(results, WINDOW_COLUMNS, window=WINDOW)
    runs = sum(len(r) for arms in results.values() for r in arms.values())
    seeds = study.num_seeds(results)
    summary = (f"{runs} runs ({len(STRATEGIES)} strategies x {seeds} seeds x "
               f"{len(VARIANTS)} availability variants), {study.time_note(results, wall)} "
               f"on this machine.\n\nFinal values after the last round (mean ± std over "
               f"seeds):\n\n{table}\nThe accuracy metrics swing from round to round (5 "
               f"non-IID clients a round pull the model towards their labels), so here they "
               f"are averaged over each run's last {WINDOW} rounds (mean ± std over seeds):"
               f"\n\n{steady}")
    (out / "table.md").write_text(summary)
    print(summary)
    print(f"figures: {', '.join(str(f) for f in figs[:3])}, ...")
    if args.readme or not args.quick:
        study.write_readme_section("cpp-study", summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
