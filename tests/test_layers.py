"""The import contract: dependencies between fsjax's layers point one way.

Read statically from the source (every ``import``, lazy ones inside functions
included), so a violation fails here before it can form a cycle at run time:

- the fsjax core never imports the networked mode (``fsjax.serving``, the
  repository's ``serving/`` folder), ``bench``, ``experiments`` or the CLI;
- ``fsjax.serving`` imports the core, never the CLI, bench or experiments;
- ``bench`` and ``experiments`` never import each other;
- the parts a round is made of (data, models, training, selection, ...) never
  import the wiring above them (simulation, config, runs, tracking, ...);
- callbacks (tracking, checkpoints) never reach back into the simulation.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Repository folder -> the package name it is imported as.
PACKAGES = {"fsjax": "fsjax", "serving": "fsjax.serving", "bench": "bench",
            "experiments": "experiments"}

PARTS = ("data", "partition", "models", "local", "engine", "backends", "aggregation",
         "evaluation", "availability", "selection", "allocation", "allocation_loop",
         "metrics", "clients", "callbacks", "files", "extras", "robust",
         "fair_aggregation", "cup_metrics", "participation")
WIRING = ("fsjax.simulation", "fsjax.config", "fsjax.runs", "fsjax.tracking", "fsjax.distributed",
          "fsjax.checkpoint", "fsjax.cli", "fsjax.serving")

# (importer prefixes, importer exceptions, forbidden import prefixes, why)
RULES = [
    (("fsjax",), ("fsjax.cli", "fsjax.__main__", "fsjax.serving"),
     ("fsjax.serving", "serving", "bench", "experiments", "fsjax.cli"),
     "the fsjax core never imports serving, bench, experiments or the CLI"),
    (("fsjax.serving",), (), ("fsjax.cli", "serving", "bench", "experiments"),
     "fsjax.serving uses the core only (shared run wiring lives in fsjax.runs)"),
    (("bench",), (), ("experiments",), "bench never imports experiments"),
    (("experiments",), (), ("bench",), "experiments never imports bench"),
    (tuple(f"fsjax.{p}" for p in PARTS), (), WIRING,
     "the parts of a round never import the wiring above them"),
    (("fsjax.tracking", "fsjax.csvlog", "fsjax.checkpoint", "fsjax.outputs"), (),
     ("fsjax.simulation", "fsjax.runs"),
     "callbacks get what they need through the callback hooks"),
]


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def module_name(path: Path, root: Path) -> str:
    """The import name of a source file, e.g. ``serving/server.py`` -> ``fsjax.serving.server``."""
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    parts[0] = PACKAGES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str) -> list[tuple[int, str]]:
    """Every module ``path`` imports (absolute names, with line numbers)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def violations(root: Path) -> list[str]:
    """One line per import that breaks a rule, for the source folders under ``root``."""
    out: dict[tuple, str] = {}
    for folder in PACKAGES:
        for path in sorted((root / folder).rglob("*.py")):
            name = module_name(path, root)
            for line, imported in imports_of(path, name):
                for importers, exempt, forbidden, why in RULES:
                    if (_under(name, importers) and not _under(name, exempt)
                            and _under(imported, forbidden)):
                        where = f"{path.relative_to(root)}:{line}"
                        out.setdefault((where, why), f"{where}: {name} imports {imported} ({why})")
    return sorted(out.values())


def test_the_repository_keeps_the_import_contract():
    assert violations(ROOT) == []


@pytest.mark.parametrize("module,source,rule", [
    ("fsjax/metrics.py", "import serving\n", "never imports serving"),
    ("fsjax/selection.py", "from fsjax.serving import server\n", "never imports serving"),
    ("fsjax/tracking.py", "def f():\n    from fsjax import simulation\n", "callback"),
    ("fsjax/local.py", "from fsjax.config import ExperimentConfig\n", "parts of a round"),
    ("serving/server.py", "from fsjax.cli import main\n", "core only"),
    ("bench/round.py", "from experiments import study\n", "bench never imports"),
    ("experiments/study.py", "import bench.round\n", "experiments never imports"),
])
def test_a_forbidden_import_is_reported(tmp_path, module, source, rule):
    for folder in PACKAGES:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / module).write_text("import numpy\n" + source)
    found = violations(tmp_path)
    assert found and all(f.startswith(f"{module}:") for f in found), found
    assert any(rule in f for f in found), found
