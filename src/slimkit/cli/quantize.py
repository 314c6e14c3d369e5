"""``slimkit quantize MODEL -c ckpt --bits 8 --data mnist --out DIR``: PTQ, exported as int8 QDQ ONNX."""

from __future__ import annotations

import argparse

from slimkit.cli._common import (
    add_data_args,
    add_latency_args,
    add_model_args,
    add_out_args,
    add_seed_arg,
    count,
    recipe_of,
    run_command_recipe,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("quantize", help="post-training int8 (or k-bit) quantization; writes an int8 ONNX model")
    add_model_args(parser)
    add_data_args(parser, aliases=("--calib",))
    add_out_args(parser)
    parser.add_argument("--bits", type=int, default=8, help="weight bits, 2-8 (activations stay 8-bit)")
    parser.add_argument("--calib-size", type=count(1, 1_000_000), default=1024,
                        help="calibration samples from the training split (default: %(default)s)")
    parser.add_argument("--observer", default="minmax",
                        help="activation observer: minmax, moving_average, percentile, mse, entropy (default: minmax)")
    parser.add_argument("--per-tensor", action="store_true", help="per-tensor weights (default: per-channel)")
    parser.add_argument("--skip", action="append", default=[], help="layer name/glob/re:regex to keep in float")
    parser.add_argument("--keep-sensitive", type=count(0), default=0, help="keep the N most sensitive layers in float")
    parser.add_argument("--bias-correction", action="store_true", help="empirical bias correction (Nagel 2019)")
    add_seed_arg(parser)
    add_latency_args(parser, batch=64)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from slimkit.quantize import QuantConfig

    options = {"weight_bits": args.bits, "observer": args.observer, "per_channel": not args.per_tensor,
               "skip": list(args.skip), "keep_sensitive": args.keep_sensitive, "bias_correction": args.bias_correction}
    QuantConfig(**{**options, "skip": tuple(args.skip)})  # the library's own message for a bad value
    stages = [{"quantize": {"method": "ptq", **options}}]
    recipe = recipe_of(args, f"quantize {args.model} (w{args.bits}a8)", stages,
                       data={"calibration_size": args.calib_size})
    run_command_recipe(args, recipe)
    return 0
