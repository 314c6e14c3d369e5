"""``slimkit quantize MODEL --bits 8 --calib mnist --out DIR [-c ckpt]``: PTQ → int8 QDQ ONNX, with accuracy, size
and ONNX Runtime latency before/after."""

from __future__ import annotations

import argparse

from slimkit._cli_common import add_model_args, add_out_args, class_count_option, console, print_table, write_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    from slimkit.quantize._observers import OBSERVERS

    parser = sub.add_parser("quantize", help="post-training int8 (or k-bit) quantization; writes an int8 ONNX model")
    add_model_args(parser)
    add_out_args(parser)
    parser.add_argument("--bits", type=int, default=8, help="weight bits, 2-8 (activations stay 8-bit)")
    parser.add_argument("--calib", default="mnist", help="calibration dataset (mnist, digits, ...)")
    parser.add_argument("--calib-size", type=int, default=1024, help="calibration images")
    parser.add_argument("--observer", default="minmax", choices=OBSERVERS.names(), help="activation observer")
    parser.add_argument("--per-tensor", action="store_true", help="per-tensor weights (default: per-channel)")
    parser.add_argument("--skip", action="append", default=[], help="layer name/glob/re:regex to keep in float")
    parser.add_argument("--keep-sensitive", type=int, default=0, help="keep the N most sensitive layers in float")
    parser.add_argument("--bias-correction", action="store_true", help="empirical bias correction (Nagel 2019)")
    parser.add_argument("--threads", type=int, default=1,
                        help="ONNX Runtime threads per session for the latency ratio (default 1: no oversubscription)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch for the latency measurement")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from slimkit._cli_common import load_model, prepare_out_dir
    from slimkit.analysis import compare_latency
    from slimkit.data import create_data
    from slimkit.export import export_onnx, export_qdq, int8_kernel_count, onnx_accuracy
    from slimkit.quantize import QuantConfig, quant_report, quantize_ptq

    config = QuantConfig(
        weight_bits=args.bits, observer=args.observer, per_channel=not args.per_tensor, skip=tuple(args.skip),
        keep_sensitive=args.keep_sensitive, bias_correction=args.bias_correction,
    )
    data = create_data(args.calib, batch_size=256, calibration_size=args.calib_size)
    model = load_model(args.model, args.checkpoint, **class_count_option(args.model, data.num_classes))
    out = prepare_out_dir(args.out, args.force)
    example = data.example_input()
    quantized = quantize_ptq(model, example, data.calibration, config)
    fp32_path = export_onnx(model, example, out / "model_fp32.onnx")
    int8_path = export_qdq(quantized, example, out / "model_int8.onnx")
    batch = data.test.inputs[: args.batch_size]
    lat = compare_latency(fp32_path, int8_path, batch, backend="onnxruntime", threads=args.threads)
    acc = {"fp32": onnx_accuracy(fp32_path, data.test), "int8": onnx_accuracy(int8_path, data.test)}
    sizes = {"fp32": fp32_path.stat().st_size, "int8": int8_path.stat().st_size}
    report = quant_report(quantized)
    print_table(
        f"{args.model}: int8 ONNX in ONNX Runtime ({args.threads} thread(s), batch {args.batch_size}; latency ratio: "
        "median (p10–p90) of paired int8/fp32 ratios, A/A: fp32 against a second session of itself)",
        ["model", "test accuracy", "file bytes", "ms", "latency ratio", "A/A"],
        [
            ("fp32", f"{acc['fp32']:.2%}", sizes["fp32"], lat.baseline.median_ms, "1.00", ""),
            (f"int8 (w{args.bits})", f"{acc['int8']:.2%}", sizes["int8"], lat.candidate.median_ms, lat.text(),
             lat.aa_text()),
        ],
    )
    if report.float_layers:
        console().print("left in float: " + ", ".join(f"{k} ({v})" for k, v in report.float_layers.items()))
    import slimkit

    write_json(out / "metrics.json", {
        "slimkit_version": slimkit.__version__, "command": "quantize", "model": args.model, "accuracy": acc,
        "file_bytes": sizes, "latency": lat.to_dict(), "int8_kernels": int8_kernel_count(int8_path),
        "report": report.to_dict(),
    })
    console().print(f"int8 model written to {int8_path}")
    return 0
