"""``slimkit convert MODEL -c ckpt --to depthwise-separable|group|crelu --data mnist --out DIR``: rewrite trained
layers into compact blocks (least-squares initialised on calibration data), then fine-tune."""

from __future__ import annotations

import argparse

from slimkit.cli._common import (
    add_data_args,
    add_finetune_args,
    add_latency_args,
    add_model_args,
    add_out_args,
    add_seed_arg,
    count,
    finetune_lr,
    recipe_of,
    run_command_recipe,
)

#: the command's names for the rewrites → the recipe stage's
REWRITES = {"depthwise-separable": "depthwise_separable", "group": "group_conv", "crelu": "crelu"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("convert", help="rewrite layers into compact blocks (depthwise-separable, group, crelu)")
    add_model_args(parser)
    parser.add_argument("--to", required=True, choices=sorted(REWRITES), help="the rewrite to apply")
    add_data_args(parser)
    add_out_args(parser)
    parser.add_argument("--layers", nargs="+", help="layers to rewrite: names, globs or re:regex (default: all)")
    parser.add_argument("--skip", nargs="+", default=[], help="layers to leave alone (names, globs or re:regex)")
    parser.add_argument("--groups", type=count(2, 4096), default=None,
                        help="groups for --to group (≥ 2, dividing the layers' input and output channels; default: 2)")
    parser.add_argument("--no-shuffle", action="store_true", help="--to group without channel shuffle")
    parser.add_argument("--bn-relu", action="store_true",
                        help="--to depthwise-separable: BN + ReLU between depthwise and pointwise (MobileNet block)")
    parser.add_argument("--calibration-samples", type=count(1, 1_000_000), default=512)
    add_finetune_args(parser, epochs=1)
    add_seed_arg(parser)
    add_latency_args(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from slimkit.cli._common import CommandError

    own = {"--groups": ("group", args.groups is not None), "--no-shuffle": ("group", args.no_shuffle),
           "--bn-relu": ("depthwise-separable", args.bn_relu)}  # one rewrite's options: the --to, whether given
    for flag, (owner, given) in own.items():
        if given and owner != args.to:
            raise CommandError(f"{flag} is an option of --to {owner}, and this is --to {args.to}: drop {flag}, or use "
                               f"--to {owner}")
    lr = finetune_lr(args)
    to = REWRITES[args.to]
    options = {}
    if to == "group_conv":
        options = {"groups": args.groups or 2, "shuffle": not args.no_shuffle}
    elif to == "depthwise_separable":
        options = {"norm": args.bn_relu, "activation": args.bn_relu}
    stage = {"to": to, "options": options, "layers": list(args.layers) if args.layers else None,
             "skip": list(args.skip), "calibration_samples": args.calibration_samples}
    stages = [{"convert": stage}]
    if args.finetune_epochs:
        stages.append({"finetune": {"epochs": args.finetune_epochs, "lr": lr, "grad_clip": 5.0}})
    run_command_recipe(args, recipe_of(args, f"convert {args.model} → {args.to}", stages), flags={"groups": "--groups"})
    return 0
