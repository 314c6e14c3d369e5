"""``slimkit auto MODEL -c ckpt --data mnist --budget latency=0.4 --max-drop 0.5 --out DIR``: search the mix of
techniques for a budget (slimkit.auto), then reproduce the chosen recipe with ``slimkit compress`` and check it."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

from slimkit.cli._common import (
    CommandError,
    add_model_args,
    add_resume_force_args,
    add_seed_arg,
    count,
    real,
)

EPILOG = textwrap.dedent("""\
    budget (--budget, any combination, comma-separated; each a ratio to the input model's, in (0, 1]):
      latency=R   ONNX Runtime latency at --latency-batch and --threads, measured against the input model
                  (interleaved, with an A/A control: a "too noisy" comparison cannot confirm the budget)
      size=R      bytes of the deployed file (fp32 ONNX, int8 QDQ ONNX, or the Huffman-coded container of a
                  weight-shared model, whichever the chosen mix deploys as) / the input's fp32 ONNX file
      macs=R      multiply-accumulates per sample
    e.g. --budget latency=0.4    --budget size=0.05    --budget latency=0.5,size=0.1

    what it does: measures every knob's per-layer sensitivity on calibration data (channels per group, low rank,
    int8 per layer, sparsity and k-means bits per layer) and its cost (MACs, bytes, measured ORT latency tables),
    solves an integer program for the least predicted accuracy loss within the budget, carries the plan out as
    recipe stages with recovery (KD from the input, or fine-tuning), measures the deployed file, and backs off the
    most sensitive choice when the validation accuracy drops more than --max-drop (or stays under
    --min-accuracy). Decisions use the validation split only. Everything is in --out: analysis/, candidates/NN/,
    report.html (Pareto front of every candidate), recipe.yaml (an ordinary recipe), and final/ (that recipe run
    by 'slimkit compress', checked to reproduce).

    exit status: 0 when the chosen model meets the budget, --max-drop and --min-accuracy as measured and the
    recipe reproduces it; 1 when the search finished without that (the report says why); 2 for bad input.
    """)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "auto", help="find the mix of pruning, low rank, int8 and weight sharing that fits a latency / size / "
        "MACs budget", description="Search across compression families for a budget, verify by measurement, and "
        "write the recipe that reproduces the result.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--data", default="mnist", help="dataset: mnist, digits, or an image folder (default: mnist)")
    parser.add_argument("--budget", required=True, metavar="KEY=R[,KEY=R]",
                        help="latency=R, size=R, macs=R (ratios to the input model's; see below)")
    parser.add_argument("--max-drop", type=real(0, 100, high_open=True), default=1.0, metavar="POINTS",
                        help="largest validation accuracy drop accepted, in percentage points (default: 1.0)")
    parser.add_argument("--min-accuracy", type=real(1, 100, low_open=True), default=None, metavar="PERCENT",
                        help="lowest validation accuracy accepted, in percent (e.g. 98.5, not 0.985; default: only "
                        "--max-drop)")
    parser.add_argument("--latency-batch", type=count(1, 4096), default=1,
                        help="the batch a latency budget is for (default: 1)")
    parser.add_argument("--threads", type=count(1, 256), default=1,
                        help="ONNX Runtime threads per session for latency (default: 1)")
    parser.add_argument("--formats", default="onnx,int8,container",
                        help="deployment formats to consider: onnx, int8, container (default: all)")
    parser.add_argument("--knobs", default="channels,rank,int8,sparsity,clusters",
                        help="what may change: channels, rank, int8, sparsity, clusters (default: all)")
    parser.add_argument("--recovery", choices=["kd", "finetune"], default="kd",
                        help="recovery after pruning / factorisation (default: kd from the input model)")
    parser.add_argument("--recovery-epochs", type=count(0, 10_000), default=2, help="(default: 2)")
    parser.add_argument("--recovery-lr", type=real(0, 10, low_open=True), default=None,
                        help="learning rate of the recovery (and of --sensitivity-steps) (default: 0.01)")
    parser.add_argument("--cluster-epochs", type=count(0, 10_000), default=None,
                        help="centroid fine-tuning epochs of the container format (default: 1)")
    parser.add_argument("--prune-rounds", type=count(1, 100), default=None,
                        help="magnitude pruning rounds of the container format's sparsity knob, each with recovery "
                             "(default: 1)")
    parser.add_argument("--max-candidates", type=count(1, 1000), default=6,
                        help="candidates the accuracy-aware loop may try (default: 6)")
    parser.add_argument("--time-limit", type=real(0, None, low_open=True), metavar="SECONDS",
                        help="stop trying new candidates after this many seconds")
    parser.add_argument("--sensitivity", choices=["auto", "loss", "hessian"], default="auto",
                        help="measured loss, HAWQ-V2 Hessian-trace estimate, or auto (default)")
    parser.add_argument("--sensitivity-steps", type=count(0, 100_000), default=None, metavar="STEPS",
                        help="fine-tuning steps before each container sparsity's cost is measured, when they fit "
                             "the analysis time (default: 0, one-shot)")
    parser.add_argument("--calibration-samples", type=count(1, 1_000_000), default=512,
                        help="calibration samples of the sensitivity analysis (default: 512)")
    parser.add_argument("--criterion", default=None,
                        help="channel importance criterion of the channels knob (default: l1)")
    parser.add_argument("--skip", nargs="*", default=[], help="layers never changed (names, globs, re:regex)")
    parser.add_argument("--batch-size", type=count(1, 65_536), default=128, help="training batch size (default: 128)")
    parser.add_argument("--calib-size", type=count(1, 1_000_000), default=1024,
                        help="calibration split size (default: 1024)")
    parser.add_argument("--train-samples", type=count(1), metavar="N", help="recover on the first N training samples")
    parser.add_argument("--eval-samples", type=count(1), metavar="N",
                        help="validate on the first N validation samples (a quick try)")
    add_seed_arg(parser)
    parser.add_argument("--out", "-o", required=True, help="run folder: new or empty, or an earlier auto run")
    add_resume_force_args(parser)
    parser.add_argument("--no-verify", action="store_true",
                        help="do not run the chosen recipe with 'slimkit compress' to check it reproduces")
    parser.set_defaults(run=run)


def _split(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def sections(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The recipe's model and data sections (the data are created from the same values, so the recipe reproduces
    exactly what the search ran)."""
    from slimkit.cli._common import check_input_file

    model: dict[str, Any] = {"spec": args.model}
    if args.checkpoint:
        model["checkpoint"] = str(check_input_file(args.checkpoint, "checkpoint").resolve())
    data: dict[str, Any] = {"name": args.data, "batch_size": args.batch_size, "augment": False, "seed": args.seed,
                            "calibration_size": args.calib_size}
    for key in ("train_samples", "eval_samples"):
        if getattr(args, key, None):
            data[key] = getattr(args, key)
    return model, data


def _subset(loader: Any, n: int | None, *, shuffle: bool = False, seed: int = 0) -> Any:
    """The first ``n`` samples of a tensor loader, as the recipe runner takes ``train_samples`` / ``eval_samples``."""
    from slimkit.data import TensorLoader

    if n is None or loader is None or not isinstance(loader, TensorLoader) or n >= len(loader.inputs):
        return loader
    return TensorLoader(loader.inputs[:n], loader.targets[:n], loader.batch_size, shuffle=shuffle,
                        augment=loader.augment, seed=seed)


def _check_recipe(model: dict[str, Any], data: dict[str, Any]) -> None:
    """The model, checkpoint and dataset as a recipe would check them (names, files, the model fits the data),
    before any work."""
    import re

    import yaml

    from slimkit.pipeline import RecipeError, parse_recipe

    text = yaml.safe_dump({"version": 1, "model": model, "data": data, "stages": [{"evaluate": {"split": "valid"}}]})
    try:
        parse_recipe(text, "<slimkit auto>", Path.cwd(), allow_code=True)
    except RecipeError as error:
        raise CommandError(re.sub(r"^<slimkit auto>, line \d+: ", "", str(error))) from None


def _left_out(config: Any, knob: str | None, formats: tuple[str, ...]) -> tuple[str, str] | None:
    """Why the search leaves out ``knob`` (None: no knob) of ``formats`` under ``config``, and what to add; None when
    it is searched."""
    if knob is not None and knob not in config.knobs:
        return f"--knobs {','.join(config.knobs)} leaves out {knob}", f"add {knob} to --knobs"
    if not set(formats) & set(config.formats):
        return (f"--formats {','.join(config.formats)} leaves out {' and '.join(formats)}",
                f"add {' or '.join(formats)} to --formats")
    return None


def _check_used(args: argparse.Namespace, config: Any) -> None:
    """Refuse the options that tune a part of the search the other options leave out: they would set nothing."""
    from slimkit.auto import FORMATS

    def formats_with(knob: str) -> tuple[str, ...]:
        return tuple(name for name in FORMATS.names() if knob in FORMATS.get(name).knobs)

    unused = {  # flag: (value given or None, the knob it tunes, the formats it is for, what it does)
        "--criterion": (args.criterion, "channels", formats_with("channels"),
                        "ranks the channels of the channels knob"),
        "--cluster-epochs": (args.cluster_epochs, None, ("container",), "fine-tunes the container format's centroids"),
        "--prune-rounds": (args.prune_rounds, "sparsity", formats_with("sparsity"),
                           "prunes the container format's sparsity knob in rounds"),
        "--sensitivity-steps": (args.sensitivity_steps, "sparsity", formats_with("sparsity"),
                                "fine-tunes before each container sparsity is measured"),
    }
    for flag, (value, knob, formats, what) in unused.items():
        left_out = _left_out(config, knob, formats) if value is not None else None
        if left_out is not None:
            raise CommandError(f"{flag} {what}, and {left_out[0]}: {left_out[1]}, or drop {flag}")
    if args.sensitivity_steps is not None and args.sensitivity == "hessian":
        raise CommandError("--sensitivity-steps fine-tunes before each container sparsity's loss is measured, and "
                           "--sensitivity hessian estimates it instead: drop --sensitivity-steps, or use --sensitivity "
                           "loss")
    if args.recovery_lr is not None and not args.recovery_epochs and not args.sensitivity_steps:
        raise CommandError("--recovery-lr is the learning rate of the recovery (and of --sensitivity-steps), and "
                           "--recovery-epochs is 0 (no recovery): give --recovery-epochs N, or drop --recovery-lr")


def run(args: argparse.Namespace) -> int:
    from slimkit._io import is_inside
    from slimkit.auto import AutoConfig, parse_budget

    budget = parse_budget(args.budget, batch=args.latency_batch, threads=args.threads)
    given = {"criterion": args.criterion, "sensitivity_steps": args.sensitivity_steps, "recovery_lr": args.recovery_lr,
             "cluster_epochs": args.cluster_epochs, "prune_rounds": args.prune_rounds}
    config = AutoConfig(
        budget=budget, max_drop=args.max_drop, min_accuracy=args.min_accuracy, formats=_split(args.formats),
        knobs=_split(args.knobs), sensitivity=args.sensitivity, calibration_samples=args.calibration_samples,
        recovery=args.recovery, recovery_epochs=args.recovery_epochs, max_candidates=args.max_candidates,
        time_limit=args.time_limit, skip=tuple(args.skip), seed=args.seed,
        **{key: value for key, value in given.items() if value is not None})
    _check_used(args, config)
    model_section, data_section = sections(args)
    _check_recipe(model_section, data_section)
    checkpoint = model_section.get("checkpoint")
    if checkpoint and is_inside(checkpoint, args.out):
        raise CommandError(f"the input checkpoint '{checkpoint}' is inside the output folder '{args.out}': choose "
                           "another --out so that the run (a --force restart, its model.pt) can never delete or "
                           "overwrite its input")
    from slimkit.cli._auto_run import search_and_verify

    return search_and_verify(args, config, model_section, data_section)
