"""The ``slimkit`` command: a thin layer over the library. Each command lives beside the code it drives."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from slimkit._errors import SlimkitError

#: command name → module with ``add_parser(subparsers)`` and ``run(args) -> int``; imported only when used,
#: so ``slimkit --help`` stays fast and a technique's heavy imports load only for its own command.
COMMANDS: dict[str, str] = {
    "demo": "slimkit._cli_demo",
    "train": "slimkit.train._cli",
    "profile": "slimkit.analysis._cli",
    "prune": "slimkit.prune._cli",
    "quantize": "slimkit.quantize._cli",
    "decompose": "slimkit.decompose._cli",
    "cluster": "slimkit.share._cli",
    "distill": "slimkit.distill._cli",
    "convert": "slimkit.convert._cli",
    "compress": "slimkit.pipeline._cli",
    "export": "slimkit.export._cli",
    "bench": "slimkit._cli_bench",
}


def build_parser() -> argparse.ArgumentParser:
    from slimkit import __version__

    parser = argparse.ArgumentParser(prog="slimkit", description="Make trained PyTorch models small and fast.")
    parser.add_argument("--version", action="version", version=f"slimkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue  # a command whose technique is not built yet is simply not offered
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run the command, and turn a ``SlimkitError`` into one clear line and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except SlimkitError as error:
        print(f"slimkit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"slimkit {args.command}: interrupted; rerun with --resume where the command supports it",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
