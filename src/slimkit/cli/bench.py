"""``slimkit bench``: runs the benchmarks (``python -m benchmarks.run``) from a source checkout."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from slimkit._errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="run the benchmarks and regenerate BENCHMARKS.md (source checkout)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", help="comma-separated topics")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parents[3]
    if not (root / "benchmarks" / "run.py").is_file():
        raise ConfigError("benchmarks live in the source checkout: run 'slimkit bench' from a clone of slimkit")
    cmd = [sys.executable, "-m", "benchmarks.run", *(["--quick"] if args.quick else []),
           *(["--only", args.only] if args.only else [])]
    return subprocess.call(cmd, cwd=root)
