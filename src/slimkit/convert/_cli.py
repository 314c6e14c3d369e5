"""``slimkit convert MODEL [-c ckpt] --to depthwise-separable|group|crelu --data mnist --out DIR``.

Prints params, MACs and accuracy (mIoU for segmentation data) of the original model, right after the rewrite
(weight fit only), after least-squares reconstruction on calibration data, and after fine-tuning.
"""

from __future__ import annotations

import argparse

from slimkit._cli_common import (
    add_data_args,
    add_model_args,
    add_out_args,
    class_count_option,
    console,
    prepare_out_dir,
    print_table,
    save_model_files,
    write_json,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from slimkit.convert._driver import CONVERTERS

    parser = sub.add_parser("convert", help="rewrite layers into compact blocks (depthwise-separable, group, crelu)")
    add_model_args(parser)
    parser.add_argument("--to", required=True, choices=CONVERTERS.names(), help="the rewrite to apply")
    add_data_args(parser)
    add_out_args(parser)
    parser.add_argument("--layers", nargs="+", help="layers to rewrite: names, globs or re:regex (default: all)")
    parser.add_argument("--skip", nargs="+", default=[], help="layers to leave alone (names, globs or re:regex)")
    parser.add_argument("--groups", type=int, default=2, help="groups for --to group")
    parser.add_argument("--no-shuffle", action="store_true", help="--to group without channel shuffle")
    parser.add_argument("--bn-relu", action="store_true",
                        help="--to depthwise-separable: BN + ReLU between depthwise and pointwise (MobileNet block)")
    parser.add_argument("--calibration-samples", type=int, default=512)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)


def _config(args: argparse.Namespace):
    from slimkit.convert._rewrites import CReLUConfig, DepthwiseSeparableConfig, GroupConvConfig

    common = {"layers": tuple(args.layers) if args.layers else None, "skip": tuple(args.skip),
              "calibration_samples": args.calibration_samples}
    if args.to == "depthwise-separable":
        return DepthwiseSeparableConfig(norm=args.bn_relu, activation=args.bn_relu, **common)
    if args.to == "group":
        return GroupConvConfig(groups=args.groups, shuffle=not args.no_shuffle, **common)
    return CReLUConfig(**common)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from slimkit._cli_common import load_model
    from slimkit._errors import ConfigError
    from slimkit.analysis import evaluate, profile
    from slimkit.convert._driver import convert, layers_to_convert
    from slimkit.convert._finetune import fine_tune_
    from slimkit.data import create_data

    if args.finetune_epochs < 0:
        raise ConfigError(f"--finetune-epochs must be ≥ 0, got {args.finetune_epochs}")
    torch.manual_seed(args.seed)
    data = create_data(args.data, batch_size=args.batch_size, seed=args.seed)
    model = load_model(args.model, args.checkpoint, **class_count_option(args.model, data.num_classes))
    example = data.example_input()
    config = _config(args)
    names = layers_to_convert(model, example, args.to, config)  # validates the selection before any work
    out = prepare_out_dir(args.out, args.force)
    metric = "miou" if data.task == "segmentation" else "accuracy"

    def score(net) -> float:
        result = evaluate(net, data.test, metric=metric)
        return float(result.miou if metric == "miou" else result.accuracy)

    def row(stage: str, net) -> list:
        totals = profile(net, example).total
        return [stage, totals.params, totals.macs, score(net)]

    rows = [row("original", model)]
    rewritten = convert(model, example, args.to, config)
    rows.append(row("after rewrite (weight fit)", rewritten))
    reconstructed = convert(model, example, args.to, config, calibration=data.calibration)
    rows.append(row("after reconstruction", reconstructed))
    fine_tune_(reconstructed, data.train, epochs=args.finetune_epochs, lr=args.lr, progress=True, seed=args.seed)
    rows.append(row(f"after fine-tuning ({args.finetune_epochs} ep)", reconstructed))
    print_table(f"{args.model} → {args.to} ({len(names)} layers)", ["stage", "params", "MACs", metric], rows)
    files = save_model_files(reconstructed, example, out)
    write_json(out / "convert.json", {
        "model": args.model, "checkpoint": args.checkpoint, "to": args.to, "layers": names,
        "config": dataclasses.asdict(config), "data": args.data, "metric": metric,
        "stages": [dict(zip(["stage", "params", "macs", metric], r, strict=True)) for r in rows], "files": files,
    })
    console().print(f"converted {len(names)} layers; model written to {out}")
    return 0
