"""``slimkit cluster MODEL -c ckpt --bits 5 --data mnist --out DIR``: k-means weight sharing (+ centroid fine-tuning),
written as the Huffman-coded container ``model.slim`` (Han et al. 2016)."""

from __future__ import annotations

import argparse

from slimkit.cli._common import (
    add_data_args,
    add_latency_args,
    add_model_args,
    add_out_args,
    add_seed_arg,
    count,
    real,
    recipe_of,
    run_command_recipe,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("cluster", help="share weights by k-means (Deep Compression) and write the compressed "
                            "container (Huffman-coded)")
    add_model_args(parser)
    add_data_args(parser)
    add_out_args(parser)
    parser.add_argument("--bits", type=count(1, 16), default=None, help="bits per cluster index for every layer, "
                        "1-16 (default: conv 8, fc 5 as Han et al. 2016)")
    parser.add_argument("--conv-bits", type=count(1, 16), default=None,
                        help="bits for conv layers (default 8; not with --bits)")
    parser.add_argument("--fc-bits", type=count(1, 16), default=None,
                        help="bits for linear layers (default 5; not with --bits)")
    parser.add_argument("--init", default="linear", help="centroid initialisation: linear, density, random")
    parser.add_argument("--layers", nargs="*", default=None, help="layer names/globs/re: regexes (default: all)")
    parser.add_argument("--epochs", type=count(0, 10_000), default=0, help="centroid fine-tuning epochs")
    parser.add_argument("--centroid-gradient", choices=["sum", "mean"], default="sum",
                        help="with --epochs, a centroid's gradient in fine-tuning: the sum over its weights (Han "
                        "et al. 2016, Eq. 3; default) or their mean (stable with few bits, where a centroid holds "
                        "thousands)")
    parser.add_argument("--lr", type=real(0, 10, low_open=True), default=None,
                        help="with --epochs, the centroid fine-tune's learning rate (default: 0.001)")
    add_seed_arg(parser)
    add_latency_args(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from slimkit.cli._common import CommandError
    from slimkit.share import ClusterConfig

    per_kind = {key: value for key, value in (("conv_bits", args.conv_bits), ("fc_bits", args.fc_bits))
                if value is not None}
    if args.bits is not None and per_kind:
        flags = " and ".join(f"--{key.replace('_', '-')}" for key in per_kind)
        raise CommandError(f"--bits sets every layer's bits and {flags} a kind's: give one or the other")
    options = {"bits": args.bits, "init": args.init, "layers": args.layers, **per_kind}
    if args.centroid_gradient != "sum":
        if not args.epochs:
            raise CommandError("--centroid-gradient sets how --epochs of fine-tuning move the centroids: give "
                               "--epochs N too")
        options["centroid_gradient"] = args.centroid_gradient
    if args.lr is not None and not args.epochs:
        raise CommandError("--lr is the learning rate of the --epochs centroid fine-tune: give --epochs N too")
    ClusterConfig(**options)
    stages = [{"cluster": options}]
    if args.epochs:
        stages.append({"finetune": {"epochs": args.epochs, "lr": 0.001 if args.lr is None else args.lr}})
    stages.append({"export": {"format": "compressed", "file": "model.slim"}})
    run_command_recipe(args, recipe_of(args, f"cluster {args.model}", stages))
    return 0
