"""``slimkit quantize MODEL -c ckpt --bits 8 --data mnist --out DIR``: PTQ, exported as int8 QDQ ONNX;
``--method gptq --bits 4 --group-size 128``: weight-only GPTQ (or AWQ, AdaRound, ...), exported with ONNX Runtime's
``MatMulNBits``."""

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
    parser.add_argument("--bits", type=int, default=8,
                        help="weight bits, 2-8 (activations 8-bit unless --weight-only or --group-size)")
    parser.add_argument("--method", default="ptq",
                        help="how weights are rounded and what runs first: ptq (round to nearest), gptq, awq, "
                             "adaround, smoothquant, combinations like awq+gptq, options like gptq:damp=0.02 "
                             "(default: %(default)s)")
    parser.add_argument("--group-size", type=count(1, 1_000_000), default=None,
                        help="one weight scale per GROUP_SIZE input channels (e.g. 128); implies --weight-only")
    parser.add_argument("--weight-only", action="store_true",
                        help="quantize weights only, activations stay float (MatMulNBits ONNX for Linear layers)")
    parser.add_argument("--zero-point", action="store_true",
                        help="asymmetric weight grids with a zero point per group (weight-only)")
    parser.add_argument("--calib-size", type=count(1, 1_000_000), default=1024,
                        help="calibration samples from the training split (default: %(default)s)")
    parser.add_argument("--observer", default=None,
                        help="activation observer: minmax, moving_average, percentile, mse, entropy (default: minmax; "
                             "not with --weight-only, whose activations stay float)")
    parser.add_argument("--per-tensor", action="store_true", help="per-tensor weights (default: per-channel)")
    parser.add_argument("--skip", action="append", default=[], help="layer name/glob/re:regex to keep in float")
    parser.add_argument("--keep-sensitive", type=count(0), default=0, help="keep the N most sensitive layers in float")
    parser.add_argument("--bias-correction", action="store_true", help="empirical bias correction (Nagel 2019)")
    parser.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                        help="7-bit weights under 8-bit activations, for x86 CPUs without VNNI whose int8 kernels "
                             "saturate (default: decided for this machine's CPU; --reduce-range when the target "
                             "lacks VNNI, --no-reduce-range for a VNNI or ARM target)")
    add_seed_arg(parser)
    add_latency_args(parser, batch=64)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from slimkit.cli._common import CommandError
    from slimkit.export import is_matmul_nbits_block
    from slimkit.quantize import QuantConfig, parse_method

    weight_only = args.weight_only or args.group_size is not None
    if weight_only and args.observer is not None:
        raise CommandError("--observer calibrates activations, which --weight-only (and --group-size) keep in float: "
                           "drop --observer")
    if args.group_size is not None and not is_matmul_nbits_block(args.group_size):
        raise CommandError(f"--group-size {args.group_size}: the exported model runs in ONNX Runtime's MatMulNBits "
                           "kernel, whose groups are a power of two ≥ 16: use --group-size 32, 64 or 128")
    if args.group_size is not None and args.per_tensor:
        raise CommandError("--group-size gives every group of input channels its own scale and --per-tensor one scale "
                           "per tensor: give one of them")
    if weight_only and args.reduce_range is not None:
        flag = "--reduce-range" if args.reduce_range else "--no-reduce-range"
        raise CommandError(f"{flag} chooses the weight range of the int8 kernels of quantized activations, which "
                           f"--weight-only (and --group-size) keep in float: drop {flag}")
    method = "rtn" if args.method == "qat" else args.method  # qat (fake-quant training) starts from RTN
    if weight_only and any(step.name == "smoothquant" for step in parse_method(method)):
        raise CommandError(f"--method {args.method}: smoothquant moves activation outliers into the weights, which "
                           "only helps when activations are quantized, and --weight-only (and --group-size) keep them "
                           "in float: drop --weight-only, or use awq for weight-only quantization")
    options = {"weight_bits": args.bits, "per_channel": not args.per_tensor, "skip": list(args.skip),
               "keep_sensitive": args.keep_sensitive, "bias_correction": args.bias_correction}
    if args.observer is not None:
        options["observer"] = args.observer
    if weight_only:
        options.update(activation_bits=None, group_size=args.group_size, weight_symmetric=not args.zero_point)
    elif args.zero_point:
        raise CommandError("--zero-point gives weight-only grids a zero point; int8 kernels (the default, weights and "
                           "activations) take symmetric weights: add --weight-only or drop --zero-point")
    if args.reduce_range is not None:
        options["reduce_range"] = args.reduce_range
    # the library's own message for a bad value or combination
    QuantConfig(**{**options, "skip": tuple(args.skip)}, method=method)
    stages = [{"quantize": {"method": args.method, **options}}]
    label = f"w{args.bits}" + (f"g{args.group_size}" if args.group_size else "") + ("" if weight_only else "a8")
    recipe = recipe_of(args, f"quantize {args.model} ({args.method}, {label})", stages,
                       data={"calibration_size": args.calib_size})
    run_command_recipe(args, recipe, flags={"keep_sensitive": "--keep-sensitive", "group_size": "--group-size"})
    return 0
