"""What the commands share: argument types that refuse bad values at parse time, model loading, tables, and running
a command's recipe."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimkit._errors import CheckpointError, ConfigError, SlimkitError
from slimkit._runtimes import RUNTIMES

if TYPE_CHECKING:
    from torch import nn


class CommandError(SlimkitError):
    """A command-line usage problem (a bad flag value or combination)."""


# --- argument types: a bad value is one clear line before any work ----------------------------------------------


def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a {'whole ' if kind is int else ''}number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    return value


def count(minimum: int = 1, maximum: int | None = None):
    """An argparse type: a whole number in [minimum, maximum]."""

    def parse(text: str) -> int:
        value = int(_number(text, int))
        if value < minimum or (maximum is not None and value > maximum):
            upper = f", at most {maximum:,}" if maximum is not None else ""
            raise argparse.ArgumentTypeError(f"{value} is out of range: use a whole number ≥ {minimum}{upper}")
        return value

    parse.__name__ = "whole number"
    return parse


def real(low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False):
    """An argparse type: a finite number in the given (closed or open) interval."""

    def parse(text: str) -> float:
        value = _number(text, float)
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            left = "(" if low_open else "["
            right = ")" if high_open else "]"
            raise argparse.ArgumentTypeError(f"{value:g} is out of range: use a value in {left}"
                                             f"{'-∞' if low is None else f'{low:g}'}, "
                                             f"{'∞' if high is None else f'{high:g}'}{right}")
        return value

    parse.__name__ = "number"
    return parse


SEED = count(0, 2**32 - 1)


def shape(text: str) -> tuple[int, ...]:
    """An argparse type for ``C,H,W``: positive whole numbers separated by commas."""
    parts = text.split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not C,H,W: write whole numbers separated by commas, "
                                         "e.g. 1,28,28") from None
    if len(values) not in (1, 2, 3) or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"'{text}' is not C,H,W: give 1 to 3 positive sizes, e.g. 1,28,28")
    return values


# --- shared arguments --------------------------------------------------------------------------------------------


def add_model_args(parser: argparse.ArgumentParser, *, checkpoint: bool = True) -> None:
    parser.add_argument("model", help="model spec: a registered name (lenet5, resnet20:width=0.5) or file.py:factory")
    if checkpoint:
        parser.add_argument("--checkpoint", "-c", type=input_path, help="weights to load (.pt state dict / training "
                            "checkpoint, or .safetensors); loaded with weights_only=True")


def add_data_args(parser: argparse.ArgumentParser, default: str = "mnist", *, batch_size: int = 128,
                  aliases: Sequence[str] = ()) -> None:
    parser.add_argument("--data", *aliases, dest="data", default=default,
                        help="dataset: mnist, digits, mnist-seg, or an image folder (default: %(default)s)")
    parser.add_argument("--batch-size", type=count(1, 65_536), default=batch_size,
                        help="training batch size (default: %(default)s)")
    parser.add_argument("--train-samples", type=count(1), metavar="N",
                        help="train on the first N training samples only (a quick try)")
    parser.add_argument("--eval-samples", type=count(1), metavar="N",
                        help="evaluate on the first N test samples only (a quick try)")


def add_optimizer_args(parser: argparse.ArgumentParser, lr: float = 0.05, weight_decay: float = 5e-4) -> None:
    """``--lr`` and ``--weight-decay``: None unless given (so that :func:`optimizer_options` can refuse them where
    nothing trains); the command's defaults are ``lr`` and ``weight_decay``."""
    parser.add_argument("--lr", type=real(0, 10, low_open=True), default=None,
                        help=f"SGD (Nesterov momentum 0.9) learning rate (default: {lr})")
    parser.add_argument("--weight-decay", type=real(0, 1, high_open=True), default=None,
                        help=f"SGD weight decay, 0 for none (default: {weight_decay})")
    parser.set_defaults(default_lr=lr, default_weight_decay=weight_decay)


def optimizer_options(args: argparse.Namespace, *, trains: bool, nothing: str) -> dict[str, float]:
    """``{"lr", "weight_decay"}`` of :func:`add_optimizer_args`, their defaults where not given; when nothing
    trains (``trains`` false, ``nothing`` says why, e.g. "--epochs is 0") the ones given, and ``--augment``, are
    refused: they would set nothing."""
    if not trains:
        given = [flag for flag, value in (("--lr", args.lr), ("--weight-decay", args.weight_decay),
                                          ("--augment", getattr(args, "augment", None))) if value is not None]
        if given:
            raise CommandError(f"{_and(given)} {'tunes' if len(given) == 1 else 'tune'} the training, and {nothing} "
                               f"(no training): give --epochs N, or drop {_and(given)}")
    return {"lr": args.default_lr if args.lr is None else args.lr,
            "weight_decay": args.default_weight_decay if args.weight_decay is None else args.weight_decay}


#: the learning rate of a command's recovery fine-tune (``--lr`` of :func:`add_finetune_args`)
FINETUNE_LR = 0.01


def add_finetune_args(parser: argparse.ArgumentParser, epochs: int = 0) -> None:
    """The recovery fine-tune after a one-shot technique (a ``finetune`` stage when the epochs are above 0)."""
    parser.add_argument("--finetune-epochs", type=count(0, 10_000), default=epochs,
                        help="fine-tuning epochs after the technique, 0 for none (default: %(default)s)")
    parser.add_argument("--lr", type=real(0, 10, low_open=True), default=None,
                        help=f"fine-tuning learning rate (SGD Nesterov, one-cycle cosine; default: {FINETUNE_LR}; "
                             "needs --finetune-epochs above 0)")


def finetune_lr(args: argparse.Namespace, *others: tuple[str, Any]) -> float:
    """The fine-tune's learning rate; with ``--finetune-epochs 0`` (no fine-tune) ``--lr`` and the ``others``
    (flag, value or None) the command also passes to the fine-tune are refused: they would set nothing."""
    if not args.finetune_epochs:
        given = [flag for flag, value in (("--lr", args.lr), *others) if value is not None]
        if given:
            raise CommandError(f"{_and(given)} {'tunes' if len(given) == 1 else 'tune'} the --finetune-epochs "
                               "fine-tune, and --finetune-epochs is 0 (no fine-tune): give --finetune-epochs N too, or "
                               f"drop {_and(given)}")
    return FINETUNE_LR if args.lr is None else args.lr


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def add_augment_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--augment", default=None, metavar="SPEC",
                        help="augment the training images: 'shift' (random ±2 px), 'elastic' (Simard et al. 2003), "
                        "chained as 'elastic+shift', options as 'elastic:alpha=34,sigma=4'")


def add_seed_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=SEED, default=0, help="seed for initialisation and data order (default: 0)")


def input_path(text: str) -> str:
    """An argparse type for an input file: a non-empty path (an empty one would silently mean none)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the path is empty: give the file (e.g. runs/x/model.pt), or leave out the "
                                         "flag")
    return text


def folder(text: str) -> str:
    """An argparse type for an output folder: a non-empty path (an empty one would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: name the folder (e.g. runs/x)")
    return text


def add_out_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", "-o", required=True, type=folder,
                        help="run folder: new or empty, or an earlier run of this command (see --resume, --force)")
    add_resume_force_args(parser)


def add_resume_force_args(parser: argparse.ArgumentParser) -> None:
    """``--resume`` or ``--force`` (one of them: continuing a run and starting it over contradict each other)."""
    either = parser.add_mutually_exclusive_group()
    either.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    either.add_argument("--force", action="store_true", help="start over in --out when it holds an earlier run")


def add_latency_args(parser: argparse.ArgumentParser, batch: int = 1) -> None:
    """``--latency-batch`` (``batch`` images; always 1 on token data, where one block is already a whole prefill of
    its sequence length), ``--threads``, ``--runtime``, ``--no-latency``."""
    default = "1" if batch == 1 else f"{batch}, 1 on token data"
    parser.add_argument("--latency-batch", type=count(1, 4096), default=None,
                        help=f"batch size of the latency comparison (default: {default})")
    parser.set_defaults(default_latency_batch=batch)
    parser.add_argument("--threads", type=count(1, 256), default=None,
                        help="threads per runtime session for the latency comparison (default: 1: the sessions "
                             "of a comparison stay alive together, so one thread each cannot oversubscribe a shared "
                             "machine)")
    parser.add_argument("--runtime", choices=tuple(RUNTIMES), default=None,
                        help="the runtime latency is measured in (default: onnxruntime; openvino: OpenVINO's CPU "
                             "runtime in fp32, pip install openvino)")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency comparison")


def check_latency_args(args: argparse.Namespace) -> None:
    """``--latency-batch``, ``--threads`` and ``--runtime`` set the latency comparison: refused with
    ``--no-latency``, which skips it (they would set nothing)."""
    if not getattr(args, "no_latency", False):
        return
    given = [flag for flag, dest in (("--latency-batch", "latency_batch"), ("--threads", "threads"),
                                     ("--runtime", "runtime")) if getattr(args, dest, None) is not None]
    if given:
        raise CommandError(f"{_and(given)} {'sets' if len(given) == 1 else 'set'} the latency comparison, which "
                           f"--no-latency skips: drop --no-latency, or drop {_and(given)}")


# --- models and files --------------------------------------------------------------------------------------------


def load_model(spec: str, checkpoint: str | None = None, **overrides: Any) -> nn.Module:
    """Build the model named by ``spec`` (typed by the user, so a ``file.py:factory`` may be imported) and load
    ``checkpoint`` into it if given."""
    from slimkit.models import from_spec
    from slimkit.train import load_weights_

    if checkpoint is not None:  # an empty path is refused, not read as "no checkpoint" (random weights)
        check_input_file(checkpoint, "checkpoint")
    model = from_spec(spec, allow_code=True, **overrides)
    if checkpoint is not None:
        load_weights_(model, checkpoint)
    return model.eval()


def check_input_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` must be an existing file (an empty path, a folder or a missing path is named as such)."""
    if not str(path).strip():  # Path("") is the current folder
        raise CheckpointError(f"{what} path is empty: give the file (e.g. runs/x/model.pt), or leave out the flag")
    source = Path(path)
    if source.is_dir():
        raise CheckpointError(f"{what} '{source}' is a folder: give the file itself (e.g. {source}/model.pt)")
    if source.exists() and not source.is_file():
        raise CheckpointError(f"{what} '{source}' is not a regular file (a device or a pipe): give a file")
    if not source.is_file():
        raise CheckpointError(f"{what} '{source}' does not exist: check the path")
    return source


def check_output_file(path: str | os.PathLike, flag: str, *, force: bool,
                      inputs: Sequence[str | os.PathLike | None] = ()) -> Path:
    """``path`` may be written by a command: a file path in an existing folder, none of the command's ``inputs``,
    not a file of a slimkit run, auto or demo folder (slimkit's own names there, and any file already there), and
    not an existing file unless ``force``. Raises :class:`CommandError` (before any work) otherwise."""
    target = Path(path)
    if target.is_dir():
        raise CommandError(f"{flag} '{target}' is a folder: give a file path (e.g. {target / 'out.json'})")
    if target.exists() and not target.is_file():
        raise CommandError(f"{flag} '{target}' is not a regular file (a device or a pipe): give a file path; it is "
                           "never replaced, even with --force")
    if not target.parent.is_dir():
        blocker = next((p for p in target.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise CommandError(f"{flag} '{target}': '{blocker}' is a file, not a folder: give a path in a folder "
                               f"(e.g. {blocker.parent / target.name})")
        raise CommandError(f"{flag} '{target}': the folder '{target.parent}' does not exist: create it first")
    resolved = target.resolve()
    for source in inputs:
        if source and Path(source).resolve() == resolved:
            raise CommandError(f"{flag} '{target}' is the command's input: choose another file, the input is never "
                               "overwritten")
    owners = _slimkit_folders()
    for parent in resolved.parents:
        marker = next((m for m in owners if (parent / m).is_file()), None)
        if marker is None:
            continue
        first = resolved.relative_to(parent).parts[0]
        if target.exists() or first in owners[marker]:
            what = f"its own {first}" if first in owners[marker] else "its files"
            raise CommandError(f"{flag} '{target}' would replace a file of the slimkit folder '{parent}' ({what}): "
                               "choose a new file name, or a file outside it")
    if target.exists() and not force:
        raise CommandError(f"{flag} '{target}' exists: choose another file name, or pass --force to replace it")
    return target


def _slimkit_folders() -> dict[str, frozenset[str]]:
    """The file marking each kind of slimkit folder (a recipe run, an auto run, the demo) → the names it owns."""
    from slimkit.auto._folder import OWNED as AUTO_OWNED
    from slimkit.auto._folder import RUN_FILE as AUTO_FILE
    from slimkit.cli.demo import MARKER as DEMO_FILE
    from slimkit.cli.demo import OWNED as DEMO_OWNED
    from slimkit.pipeline._runner import RUN_FILE
    from slimkit.pipeline._stages import RUN_OWNED

    return {RUN_FILE: RUN_OWNED, AUTO_FILE: AUTO_OWNED, DEMO_FILE: DEMO_OWNED}


def input_shape_for(spec: str, data_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    from slimkit.models import spec_input_shape

    result = data_shape or spec_input_shape(spec)
    if result is None:
        raise ConfigError(f"the input shape of '{spec}' is unknown: pass --input-shape C,H,W")
    return tuple(result)


def write_json(path: str | os.PathLike, payload: Any) -> None:
    import json

    from slimkit._io import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


# --- printing ----------------------------------------------------------------------------------------------------


def console():
    """A rich console; in a pipe or a log it is wide enough that tables are never cut."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=240)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a rich table; numbers right-aligned."""
    from rich.table import Table

    table = Table(title=title)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*[f"{v:,}" if isinstance(v, int) else (f"{v:.4g}" if isinstance(v, float) else str(v))
                        for v in row])
    console().print(table)


def print_profile(prof, title: str = "profile") -> None:
    rows = [
        (r.name, r.type, "×".join(map(str, r.output_shape)) if r.output_shape else "", r.params, r.macs,
         r.other_ops, r.bytes)
        for r in prof.rows
    ]
    t = prof.total
    rows.append(("total", "", "", t.params, t.macs, t.other_ops, t.bytes))
    print_table(title, ["layer", "type", "output", "params", "MACs", "other ops", "bytes"], rows)


# --- a command's recipe ------------------------------------------------------------------------------------------


def recipe_of(args: argparse.Namespace, name: str, stages: list[dict[str, Any]], *, model: str | None = None,
              checkpoint: str | None = None, data: dict[str, Any] | None = None,
              evaluation: dict[str, Any] | None = None, stages_time_latency: bool = False) -> dict[str, Any]:
    """The recipe a command runs: its model and checkpoint, data, evaluation settings and stages.
    ``stages_time_latency``: a stage measures latency at ``--latency-batch`` with ``--threads`` in ``--runtime``
    itself (``prune --latency``), so they mean something even with ``--no-latency``."""
    if not stages_time_latency:
        check_latency_args(args)
    section: dict[str, Any] = {"spec": model or args.model}
    checkpoint = checkpoint if checkpoint is not None else getattr(args, "checkpoint", None)
    if checkpoint is not None:  # an empty path is refused, not read as "no checkpoint"
        section["checkpoint"] = str(check_input_file(checkpoint, "checkpoint").resolve())
    data_section = {"name": getattr(args, "data", "mnist"), "batch_size": getattr(args, "batch_size", 128),
                    "seed": getattr(args, "seed", 0), **(data or {})}
    for key in ("train_samples", "eval_samples"):
        if getattr(args, key, None):
            data_section[key] = getattr(args, key)
    evaluation_section = {"latency": not getattr(args, "no_latency", False),
                          "latency_batch": latency_batch(args, data_section["name"]),
                          "threads": getattr(args, "threads", None) or 1,
                          **({"runtime": args.runtime} if getattr(args, "runtime", None) else {}),
                          **(evaluation or {})}
    return {"version": 1, "name": name, "seed": getattr(args, "seed", 0), "model": section, "data": data_section,
            "evaluation": evaluation_section, "stages": stages}


def latency_batch(args: argparse.Namespace, data: str) -> int:
    """The batch the user asked for, else the command's default for images and 1 for token data (a batch of
    64 × 256-token blocks would take seconds per call and tell nothing a single prefill does not)."""
    from slimkit.data import DATASETS

    if getattr(args, "latency_batch", None) is not None:
        return args.latency_batch
    if data in DATASETS and DATASETS.meta(data).get("task") == "lm":
        return 1
    return getattr(args, "default_latency_batch", 1)


def in_flags(message: str, flags: Mapping[str, str]) -> str:
    """``message`` (the library's, written for recipes) with the recipe fields of ``flags`` (field → the command's
    flag) as the user typed them: ``keep_sensitive=5`` → ``--keep-sensitive 5``, ``skip=['a', 'b']`` → ``--skip a
    b``. Only ``field=value`` is rewritten: a bare word such as "groups" may be plain English."""
    import re

    def flag_value(flag: str, value: str) -> str:
        if value.startswith("[") or value.startswith("("):
            value = " ".join(a or b for a, b in re.findall(r"'([^']*)'|\"([^\"]*)\"", value)) or value
        return f"{flag} {value}"

    for field, flag in flags.items():
        message = re.sub(rf"(?<![\w.-]){re.escape(field)}=(\[[^\]]*\]|\([^)]*\)|[^\s,;:)]+)",
                         lambda match, flag=flag: flag_value(flag, match.group(1)), message)
    return message


def run_command_recipe(args: argparse.Namespace, recipe: dict[str, Any], *, flags: Mapping[str, str] | None = None):
    """Validate ``recipe`` as any recipe file is, run it into ``--out``, print its table; returns the run result.
    ``flags`` (recipe field → the command's flag) rewrite the fields a library message names as the flags the user
    typed (see :func:`in_flags`)."""
    import re

    import yaml

    from slimkit.pipeline import RecipeError, parse_recipe, run_recipe
    from slimkit.report import columns, table_rows

    text = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
    try:
        parsed = parse_recipe(text, f"<slimkit {args.command}>", Path.cwd(), allow_code=True)
    except RecipeError as error:  # the generated recipe's line numbers mean nothing on a command line
        message = re.sub(r"^<slimkit [\w-]+>, line \d+: ", "", str(error))
        raise CommandError(in_flags(message, flags or {})) from None
    out = console()
    try:
        result = run_recipe(parsed, args.out, resume=args.resume, force=args.force, reporter=stage_printer(out))
    except SlimkitError as error:  # a stage's check on the model (e.g. keep_sensitive=5 of 4 layers)
        message = in_flags(str(error), flags or {})
        if message == str(error):
            raise
        raise CommandError(message) from None
    if not result.files:  # a rank other than 0 under torchrun: rank 0 reports
        return result
    print_table(parsed.title, list(columns(result.stages)), table_rows(result.stages))
    written = ["model.pt", *(["model.onnx"] if "onnx" in result.files else []), "metrics.json",
               *(["report.html"] if "report_html" in result.files else [])]
    missing = "" if "onnx" in result.files else " (no model.onnx: its ONNX export failed, see the warning above)"
    out.print(f"written to {result.out}: {', '.join(written)}{missing}; the recipe that reproduces it: "
              f"{result.out / 'recipe.yaml'} (slimkit compress)")
    return result


def stage_printer(console: Any, recipe_path: str | None = None):
    """A runner reporter that draws a rule per stage and one result line after it."""
    from rich.markup import escape

    from slimkit.report import format_latency

    def report(event: str, info: dict[str, Any]) -> None:
        if event == "stage_start":
            call = info["call"]
            where = f" ({recipe_path or 'recipe'} line {call.line})" if recipe_path else ""
            console.rule(f"[bold]stage {call.index}/{info['total']}: {call.name}[/]{where}")
        elif event == "replay":
            console.print(f"[dim]stage {info['call'].label}: finished earlier, reloaded[/]")
        elif event == "stage_end":
            r = info["result"]
            control = "" if r.get("latency_aa_ratio") is None else f" (A/A control {r['latency_aa_ratio']:.2f})"
            console.print(f"  accuracy [bold]{r['accuracy']:.2%}[/], {r['params']:,} params, {r['macs']:,} MACs, "
                          f"{r['bytes'] / 1024:,.1f} KiB, latency {format_latency(r)} the input's{control}, "
                          f"{r['seconds']:.1f} s")
            if r.get("latency_error"):  # the runtime could not run this stage's file
                console.print(f"  [yellow]no latency:[/] {escape(str(r['latency_error']))}")
            if (r.get("notes") or {}).get("unchanged"):
                console.print("  [yellow]this stage changed nothing (same parameters, MACs and bytes): its options "
                              "selected nothing to compress[/]")
            target = (r.get("notes") or {}).get("latency_target")
            if target:
                measured = target.get("measured") or {}
                seen = "not measured" if not measured else format_latency(
                    {"latency_ratio": measured.get("ratio"), "latency_status": measured.get("status")})
                console.print(f"  latency target {target['target']} at batch {target['batch']}: predicted "
                              f"{target['predicted']:.2f} by the latency table, measured {seen}")

    return report
