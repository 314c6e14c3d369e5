"""The ``slimkit`` command: a thin layer over recipes and the library, one small module per command.

Every command that changes a model (train, prune, quantize, decompose, cluster, distill, convert) builds a one- or
two-stage recipe from its flags and runs it with :func:`slimkit.pipeline.run_recipe`, so each is resumable
(``--resume``), measured and reported the same way as ``slimkit compress``, and writes its recipe into the run
folder for ``slimkit compress`` to reproduce. ``profile``, ``export``, ``demo`` and ``bench`` drive the library
directly. Nothing outside this package imports it.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
from collections.abc import Sequence

# PyTorch's OpenMP threads spin while they wait for work. On a machine other processes share, two spinning threads
# per process collapse: a LeNet-5 training step measured 540-740 ms with the default (active) policy against 120 ms
# passive and 105 ms with one thread, at load 12 on 2 cores. Passive waiting costs little on a quiet machine, so the
# command makes it the default before torch is imported (a value the user set wins). See README, "Threads on a
# shared machine".
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from slimkit._errors import SlimkitError

#: command name → module with ``add_parser(subparsers)`` and ``run(args) -> int``; imported only when used,
#: so ``slimkit --help`` stays fast and a technique's heavy imports load only for its own command.
COMMANDS: dict[str, str] = {
    "demo": "slimkit.cli.demo",
    "train": "slimkit.cli.train",
    "profile": "slimkit.cli.profile",
    "prune": "slimkit.cli.prune",
    "quantize": "slimkit.cli.quantize",
    "decompose": "slimkit.cli.decompose",
    "cluster": "slimkit.cli.cluster",
    "distill": "slimkit.cli.distill",
    "convert": "slimkit.cli.convert",
    "compress": "slimkit.cli.compress",
    "auto": "slimkit.cli.auto",
    "export": "slimkit.cli.export",
    "bench": "slimkit.cli.bench",
}

_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space, then rerun (with --resume where the command has it)",
    errno.EDQUOT: "the disk quota is exhausted: free some space, then rerun (with --resume where the command has it)",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "permission denied: choose a folder you can write to",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.ENOENT: "a file or folder is missing: check the path",
    errno.EISDIR: "a folder was given where a file is needed: check the path",
    errno.ENOTDIR: "a file was given where a folder is needed: check the path",
    errno.EEXIST: "choose a path for a new file",
}


class _UsageError(SlimkitError):
    """A flag argparse could not take; the message names the flag and the fix."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (which flag, why, where the help is) and exit code 2 via main()."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{message} (see '{self.prog} --help')")

    def _get_values(self, action: argparse.Action, arg_strings: list[str]):  # type: ignore[override]
        # CPython's argparse turns "--flag=--" into [] for a one-value flag instead of refusing it
        if action.nargs is None and action.option_strings and arg_strings == ["--"]:
            self.error(f"argument {'/'.join(action.option_strings)}: expected a value, got '--'")
        return super()._get_values(action, arg_strings)


def build_parser() -> argparse.ArgumentParser:
    from slimkit import __version__

    parser = _Parser(prog="slimkit", description="Make trained PyTorch models small and fast.",
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"slimkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run the command, and turn bad input into one clear line and exit code 2."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as error:
        command = next((a for a in (argv if argv is not None else sys.argv[1:]) if a in COMMANDS), "")
        print(f"slimkit{' ' + command if command else ''}: error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except SlimkitError as error:
        print(f"slimkit {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the machine refused (disk full, permissions): say which file and what to do
        where = f" ({error.filename})" if error.filename else ""
        hint = _OS_HINTS.get(error.errno or -1, "check the path and the disk")
        print(f"slimkit {args.command}: error: {error.strerror or error}{where}: {hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"slimkit {args.command}: interrupted; rerun with --resume where the command supports it",
              file=sys.stderr)
        return 130

