"""Imports stay lean and point down (STYLE.md habit 7)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "slimkit"
HEAVY = ["onnxruntime", "matplotlib", "tensorly", "sklearn", "pydantic"]


def test_import_slimkit_stays_lean():
    code = f"import sys, slimkit; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


TECHNIQUES = ["analysis", "graph", "prune", "quantize", "decompose", "share", "convert", "distill", "models", "data",
              "train", "export", "report"]


@pytest.mark.parametrize("package", TECHNIQUES)
def test_technique_folders_never_import_pipeline_or_cli(package):
    for path in (SRC / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(("slimkit.pipeline", "slimkit.cli")), f"{path} imports {name}"


def test_nothing_below_the_cli_imports_it():
    for path in SRC.rglob("*.py"):
        if path.is_relative_to(SRC / "cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            assert not any(n == "slimkit.cli" or n.startswith("slimkit.cli.") for n in names), f"{path} imports {names}"
