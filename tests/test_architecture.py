"""Imports stay lean and point down (STYLE.md habit 7)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "slimkit"
HEAVY = ["onnxruntime", "openvino", "matplotlib", "tensorly", "sklearn", "pydantic"]


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


def test_import_contracts_hold():
    """The import-linter contracts of pyproject.toml (packages depend only down the layers of docs/architecture.md)
    hold for this checkout's sources, the same check as ``lint-imports``, run in a fresh interpreter so that the
    graph is built from ``src/`` here and not from whichever slimkit is installed."""
    code = (
        "import sys, pathlib, slimkit\n"
        f"assert pathlib.Path(slimkit.__file__).resolve().parent == pathlib.Path({str(SRC)!r}), slimkit.__file__\n"
        "from importlinter.cli import lint_imports\n"
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


#: every technique verb and its config class (docs/architecture.md: one technique shape)
VERBS = [
    ("slimkit.prune", "prune_channels", "PruneConfig"),
    ("slimkit.prune", "prune_depth", "DepthPruneConfig"),
    ("slimkit.prune", "magnitude_prune", "UnstructuredConfig"),
    ("slimkit.prune", "scale_width", "WidthConfig"),
    ("slimkit.quantize", "quantize", "QuantConfig"),
    ("slimkit.quantize", "quantize_qat", "QuantConfig"),
    ("slimkit.quantize", "quantize_weights", "QuantConfig"),
    ("slimkit.decompose", "decompose", "DecomposeConfig"),
    ("slimkit.convert", "convert", "RewriteConfig"),
    ("slimkit.convert", "to_depthwise_separable", "DepthwiseSeparableConfig"),
    ("slimkit.convert", "to_group_conv", "GroupConvConfig"),
    ("slimkit.convert", "to_crelu", "CReLUConfig"),
    ("slimkit.share", "cluster_weights", "ClusterConfig"),
    ("slimkit.share", "deep_compression", "DeepCompressionConfig"),
]


@pytest.mark.parametrize(("package", "verb", "config"), VERBS, ids=[v for _, v, _ in VERBS])
def test_every_technique_has_the_one_shape(package, verb, config):
    """``verb(model, example_inputs, config, *, data=None) -> nn.Module`` with a frozen dataclass config."""
    import dataclasses
    import importlib
    import inspect

    module = importlib.import_module(package)
    signature = inspect.signature(getattr(module, verb))
    params = list(signature.parameters.values())
    assert [p.name for p in params[:3]] == ["model", "example_inputs", "config"]
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params[:3])
    data = signature.parameters["data"]
    assert data.kind is data.KEYWORD_ONLY and data.default is None
    assert signature.return_annotation in ("nn.Module", "torch.nn.Module")
    config_class = getattr(module, config)
    assert dataclasses.is_dataclass(config_class) and config_class.__dataclass_params__.frozen
