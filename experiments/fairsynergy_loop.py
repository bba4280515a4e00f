"""FairSynergy inside the training loop, against uniform local steps, in the setting of experiments/fairsynergy_loop.yaml.

Each round the selected clients share a budget of local steps (K x local.steps,
the compute of uniform steps); FairSynergy splits it by solving an alpha-fair
NUM over power-law learning curves fitted online to each client's accuracy
history (``fsjax.allocation_loop``). Arms: uniform steps, FairSynergy with
alpha 0 (utilitarian), 1 (proportional) and 5 (near max-min), and the
equalising baseline; 3 seeds each, tracked in one MLflow experiment. Compares
mean accuracy, the accuracy Jain index, utility parity (CV and Jain of
cumulative utility) and total compute, and writes the table into
``experiments/README.md``.

    python -m experiments.fairsynergy_loop           # full (50 rounds, 3 seeds)
    python -m experiments.fairsynergy_loop --quick   # a few minutes
"""

from __future__ import annotations

import numpy as np

from experiments import study
BASE = study.REPO / "experiments" / "fairsynergy_loop.yaml"
QUICK = ["rounds=4", "partition.num_clients=30", "selection.clients_per_round=2",
         "local.steps=3", "partition.max_test_per_client=10", "data.test_subset=500",
         "eval.global_every=0"]
WINDOW = 10

ARMS = {
    "uniform steps": ["allocation.name=none"],
    "fairsynergy a=0": ["allocation.name=fairsynergy", "allocation.alpha=0"],
    "fairsynergy a=1": ["allocation.name=fairsynergy", "allocation.alpha=1"],
    "fairsynergy a=5": ["allocation.name=fairsynergy", "allocation.alpha=5"],
    "equalizing": ["allocation.name=equalizing"],
}
VARIANTS = {"traces, fair_select": ["selection.name=fair_select"]}
# cum_accuracy_*: the CV and Jain of accuracy summed over participations (what this
# study's table reported as "utility" before the CUP study's normalised utility existed).
WINDOW_COLUMNS = ("accuracy_mean", "accuracy_jain", "cum_accuracy_cv")
COLUMNS = ("accuracy_mean", "accuracy_jain", "accuracy_variance", "cum_accuracy_cv",
           "cum_accuracy_jain", "test_accuracy")


def main(argv=None) -> int:
    args = study.parser(__doc__.splitlines()[0], "fairsynergy_loop_out").parse_args(argv)
    extra = ["name=fairsynergy_loop", "allocation.min_steps=2", "allocation.max_steps=30"]
    if args.quick:
        extra = QUICK + ["name=fairsynergy_loop", "allocation.min_steps=1",
                         "allocation.max_steps=9"]
    results, out, wall = study.run_or_load(args, "fairsynergy_loop", "fairsynergy_loop_out",
                                           BASE, ARMS, VARIANTS, extra)
    study.comparison_figures(results, ("accuracy_mean", "accuracy_jain", "cum_accuracy_cv",
                                       "local_steps"), out / "figures", "loop_")
    table = study.markdown_table(results, COLUMNS)
    steady = study.markdown_table(results, WINDOW_COLUMNS, window=WINDOW)
    compute = []
    for vname, arms in results.items():
        for aname, runs in arms.items():
            total = np.mean([np.sum(r["metrics"]["local_steps"]) for r in runs])
            secs = np.mean([r["seconds"] for r in runs])
            compute.append(f"| {aname} | {total:.0f} | {secs:.0f} |")
    summary = (f"{sum(len(r) for a in results.values() for r in a.values())} runs, "
               f"{study.time_note(results, wall)}.\n\nFinal values after the last round "
               f"(mean ± std over seeds; `test_accuracy`: the global model on the test "
               f"subset):\n\n{table}\n"
               f"Averaged over each run's last {WINDOW} rounds (mean ± std over seeds):\n\n"
               f"{steady}\n| arm | total local steps | seconds per run |\n"
               f"|---|---|---|\n" + "\n".join(compute) + "\n")
    (out / "table.md").write_text(summary)
    print(summary)
    if args.readme or not args.quick:
        study.write_readme_section("fairsynergy-loop", summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
