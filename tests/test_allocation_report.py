"""Tests for fsjax.allocation.report (`fsjax allocate FILE`)."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from fsjax import allocation
from fsjax.allocation import report as R

EXAMPLE = Path(__file__).resolve().parents[1] / "experiments" / "fairsynergy" / "agents_example.yaml"

ONE = {
    "budget": 0.7,
    "alpha": 0,
    "agents": [
        {"name": "a", "gamma": 0.25, "e_init": 0.8},
        {"name": "b", "gamma": 0.25, "e_init": 0.007},
        {"name": "c", "gamma": 0.5, "e_init": 0.1, "scale": 0.9, "upper": 0.15},
        {"name": "d", "gamma": 0.6, "e_init": 0.05},
    ],
}
TWO = {
    "budget": [0.4, 0.3],
    "agents": [
        {"name": "p", "g1": 0.3, "g2": 0.2, "init1": 0.05, "init2": 0.1},
        {"name": "q", "g1": 0.1, "g2": 0.45, "init1": 0.2, "init2": 0.01},
    ],
}


def write(tmp_path, doc, suffix=".yaml"):
    path = tmp_path / f"agents{suffix}"
    path.write_text(json.dumps(doc) if suffix == ".json" else _yaml(doc))
    return path


def _yaml(doc):
    import yaml

    return yaml.safe_dump(doc)


def test_yaml_and_json_load_the_same_agents(tmp_path):
    a = R.load_agents(write(tmp_path, ONE, ".yaml"))
    b = R.load_agents(write(tmp_path, ONE, ".json"))
    assert a.names == b.names == ["a", "b", "c", "d"]
    for x, y in zip(a.utility, b.utility):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.upper, [np.inf, np.inf, 0.15, np.inf])
    assert a.budget == 0.7 and a.alpha == 0.0 and a.seed == 0


def test_report_lists_every_method_and_agent_with_the_solver_numbers(tmp_path):
    path = write(tmp_path, ONE)
    text = R.report(path)
    rows = [line.split() for line in text.splitlines()]
    table = {(r[0], r[1]): [float(v) for v in r[2:]] for r in rows if len(r) == 5 and r[0] in allocation.REGISTRY}
    assert {m for m, _ in table} == set(allocation.REGISTRY)
    assert {a for _, a in table} == {"a", "b", "c", "d"}
    with jax.enable_x64(True):
        agents = R.load_agents(path)
        out = allocation.solve(agents.utility, agents.budget, upper=agents.upper)
    for i, name in enumerate("abcd"):
        x, u, p = table[("fairsynergy", name)]
        assert abs(x - float(out.allocation[i])) < 1e-6
        assert abs(u - float(out.utilities[i])) < 1e-6 and abs(p - float(out.prices[i])) < 1e-6
    # Uniform splits 0.7 evenly; c's cap of 0.15 is water-filled back to the others.
    np.testing.assert_allclose([table[("uniform", n)][0] for n in "abcd"], [0.55 / 3] * 2 + [0.15, 0.55 / 3],
                               atol=1e-6)
    assert "converged=True" in text
    # The alpha override changes the solve (proportional fairness moves resource).
    assert R.report(path, alpha=5.0) != text and "alpha 5" in R.report(path, alpha=5.0)


def test_two_resource_report_includes_the_study_pass(tmp_path):
    text = R.report(write(tmp_path, TWO, ".json"))
    assert "study-pass" in text and "gap_to_joint=" in text and "alloc_2" in text
    assert "two resources" in text


def test_main_prints_and_returns_zero(capsys):
    assert R.main(EXAMPLE) == 0
    out = capsys.readouterr().out
    assert "fairsynergy" in out and "hand-1" in out and "equalizing" in out


def test_main_reports_bad_files_on_stderr(tmp_path, capsys):
    assert R.main(tmp_path / "missing.yaml") == 2
    assert "cannot read" in capsys.readouterr().err


def bad(doc, **change):
    doc = json.loads(json.dumps(doc))
    for key, value in change.items():
        if key.startswith("agent1_"):
            field = key[len("agent1_"):]
            if value is _DROP:
                doc["agents"][1].pop(field)
            else:
                doc["agents"][1][field] = value
        elif value is _DROP:
            doc.pop(key)
        else:
            doc[key] = value
    return doc


_DROP = object()
CASES = [
    ("budget", bad(ONE, budget=_DROP)),
    ("budget", bad(ONE, budget=-1)),
    ("budget", bad(ONE, budget="lots")),
    ("alpha", bad(ONE, alpha=-0.5)),
    ("agents", bad(ONE, agents=[])),
    ("agents[1].gamma", bad(ONE, agent1_gamma=_DROP)),
    ("agents[1].gamma", bad(ONE, agent1_gamma=1.5)),
    ("agents[1].gamma", bad(ONE, agent1_gamma=0)),
    ("agents[1].e_init", bad(ONE, agent1_e_init=-0.1)),
    ("agents[1].scale", bad(ONE, agent1_scale=0)),
    ("agents[1]", bad(ONE, agent1_colour="red")),
    ("agents[1].upper", bad(ONE, agent1_lower=0.3, agent1_upper=0.1)),
    ("lower", bad(ONE, agent1_lower=0.8)),
    ("seed", bad(ONE, seed=-3)),
    ("names", bad(ONE, agent1_name="a")),
    ("budget", bad(TWO, budget=1.0)),
    ("wibble", bad(ONE, wibble=1)),
]


@pytest.mark.parametrize("field,doc", CASES, ids=[f"{i}-{f}" for i, (f, _) in enumerate(CASES)])
def test_bad_files_raise_value_error_naming_the_field(tmp_path, field, doc):
    path = write(tmp_path, doc, ".json")
    with pytest.raises(ValueError) as err:
        R.load_agents(path)
    assert field in str(err.value) and str(path) in str(err.value)


def test_unparsable_files_raise_value_error(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("budget: [1, 2\nagents: {")
    with pytest.raises(ValueError, match="not valid YAML"):
        R.load_agents(broken)
    broken_json = tmp_path / "broken.json"
    broken_json.write_text("{budget: 1")
    with pytest.raises(ValueError, match="not valid JSON"):
        R.load_agents(broken_json)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        R.load_agents(listing)


def test_example_file_is_valid():
    agents = R.load_agents(EXAMPLE)
    assert len(agents.names) >= 3 and isinstance(agents.utility, allocation.PowerLaw)


def test_allocate_command_draws_bars(tmp_path, capsys):
    from fsjax import cli
    png = tmp_path / "alloc.png"
    assert cli.main(["allocate", "experiments/fairsynergy/agents_example.yaml",
                     "--plot", str(png)]) == 0
    assert "fairsynergy" in capsys.readouterr().out and png.stat().st_size > 1000
