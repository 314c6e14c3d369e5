"""``slimkit export <model-spec -c ckpt | run-dir> --format onnx|torchscript|compressed --out FILE``.

A run folder of ``slimkit compress`` is loaded by replaying its stages' architecture changes (never by unpickling),
so pruned, decomposed, converted and quantized models export like any other. Every file is checked against
PyTorch on a batch of real test inputs; the difference and the tolerance are printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from slimkit.cli._common import real


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="write a model or a compress run as ONNX / TorchScript / compressed")
    parser.add_argument("model", help="model spec (lenet5, file.py:factory) with -c, or a 'slimkit compress' folder")
    parser.add_argument("--checkpoint", "-c", help="weights for a model spec (.pt state dict or .safetensors)")
    parser.add_argument("--stage", help="for a run folder: export this finished stage (e.g. 02-prune), not the last")
    parser.add_argument("--format", "-f", choices=("onnx", "torchscript", "compressed"), default="onnx")
    parser.add_argument("--out", "-o", required=True, help="file to write")
    parser.add_argument("--data", default=None,
                        help="for a model spec: dataset whose test inputs check the file (default: mnist; a run "
                             "folder checks on its own data)")
    parser.add_argument("--atol", type=real(0, low_open=True), default=None,
                        help="largest allowed |file - PyTorch| (default 1e-4, or 0.5 for an int8 model)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument("--trust-spec", action="append", default=[], metavar="FILE.py:FACTORY",
                        help="for a run folder whose model is your own code: type its spec to allow importing it")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from slimkit.cli._common import CommandError, check_output_file, console, load_model
    from slimkit.models import class_count_option
    from slimkit.pipeline import export_model

    source = Path(args.model)
    target = check_output_file(args.out, "--out", force=args.force, inputs=(args.checkpoint,))
    exporter = None
    if source.is_dir():
        from slimkit.pipeline import load_run

        if args.checkpoint:
            raise CommandError("--checkpoint is for a model spec; a run folder already holds its weights")
        if args.data is not None:
            raise CommandError(f"--data is for a model spec; a run folder checks the file on its own recipe's data: "
                               f"drop --data {args.data}")
        model, data, exporter = load_run(source, args.stage, trusted_specs=tuple(args.trust_spec))
    else:
        if args.stage:
            raise CommandError("--stage needs a run folder of 'slimkit compress'")
        if args.trust_spec:
            raise CommandError("--trust-spec allows the code a run folder's recipe names; a model spec you type "
                               "here is trusted already: drop --trust-spec")
        from slimkit.data import create_data

        data = create_data(args.data or "mnist", batch_size=128)
        model = load_model(args.model, args.checkpoint, **class_count_option(args.model, data.num_classes))
    atol = args.atol if args.atol is not None else (0.5 if exporter is not None else 1e-4)
    check = export_model(model, data, target, args.format, exporter=exporter, atol=atol)
    console().print(
        f"wrote {target} ({check['bytes']:,} bytes, {args.format}); checked in {check['runtime']} against PyTorch on "
        f"{check['batch']} test inputs: max |diff| = {check['max_abs_diff']:.2e} (tolerance {atol:g}), "
        f"argmax agreement {check['argmax_agreement']:.1%}"
    )
    return 0
