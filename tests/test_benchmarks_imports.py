"""The benchmark scripts import each other's names inside functions, so a renamed constant breaks a benchmark only
hours into its run. Resolve every such import statically (no benchmark is imported or run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _top_level_names(path: Path) -> set[str]:
    """Names a module defines at its top level (functions, classes, assignments, imports)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def _benchmark_imports() -> list[tuple[str, str, str]]:
    """(importing file, benchmark module, name) for every ``from benchmarks.X import name`` in benchmarks/."""
    found = []
    for path in sorted(BENCHMARKS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmarks."):
                found += [(path.name, node.module, alias.name) for alias in node.names]
    return found


def test_the_scan_sees_function_level_imports() -> None:
    assert ("bench_auto.py", "benchmarks.bench_deep_compression", "run_cached") in _benchmark_imports()


@pytest.mark.parametrize(("importer", "module", "name"), _benchmark_imports())
def test_every_benchmark_import_resolves(importer: str, module: str, name: str) -> None:
    target = BENCHMARKS / f"{module.removeprefix('benchmarks.')}.py"
    assert target.is_file(), f"{importer} imports from {module}, which does not exist"
    assert name in _top_level_names(target), f"{importer} imports {name} from {module}, which does not define it"
