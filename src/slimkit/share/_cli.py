"""``slimkit cluster MODEL -c ckpt --bits 5 --data mnist --out DIR``: k-means weight sharing + Huffman container."""

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
    parser = sub.add_parser("cluster", help="share weights by k-means (Deep Compression) and write the compressed "
                            "container (Huffman-coded)")
    add_model_args(parser)
    add_data_args(parser)
    add_out_args(parser)
    parser.add_argument("--bits", type=int, default=None, help="bits per cluster index for every layer "
                        "(default: conv 8, fc 5 as Han et al. 2016)")
    parser.add_argument("--conv-bits", type=int, default=8)
    parser.add_argument("--fc-bits", type=int, default=5)
    parser.add_argument("--init", default="linear", help="centroid initialisation: linear, density, random")
    parser.add_argument("--layers", nargs="*", default=None, help="layer names/globs/re: regexes (default: all)")
    parser.add_argument("--epochs", type=int, default=0, help="centroid fine-tuning epochs")
    parser.add_argument("--lr", type=float, default=0.001)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from slimkit._cli_common import load_model
    from slimkit.analysis import evaluate
    from slimkit.data import create_data
    from slimkit.share import ClusterConfig, cluster_weights, finalize_clusters, load_compressed, save_compressed
    from slimkit.train import default_optimizer, fit

    config = ClusterConfig(bits=args.bits, conv_bits=args.conv_bits, fc_bits=args.fc_bits, init=args.init,
                           layers=args.layers)
    data = create_data(args.data, batch_size=args.batch_size)
    options = class_count_option(args.model, data.num_classes)
    model = load_model(args.model, args.checkpoint, **options)
    spec = _spec_with(args.model, options)
    out = prepare_out_dir(args.out, args.force)
    before = evaluate(model, data.test)
    clustered = cluster_weights(model, config)
    if args.epochs > 0:
        fit(clustered, data.train, epochs=args.epochs, optimizer=lambda p: default_optimizer(p, args.lr),
            scheduler="cosine")
    clustered.eval()
    summary = save_compressed(clustered, out / "model.slim", spec=spec)
    after = evaluate(load_compressed(out / "model.slim"), data.test)
    dense_bytes = sum(p.numel() for p in model.parameters()) * 4
    files = save_model_files(finalize_clusters(clustered), data.example_input(), out)
    rows = [(lb.name, lb.weights, lb.nonzero, lb.bits, lb.total) for lb in summary.layers]
    print_table("clustered layers", ["layer", "weights", "non-zero", "bits", "bytes"], rows)
    write_json(out / "metrics.json", {
        "spec": spec, "accuracy_before": before.accuracy, "accuracy_after": after.accuracy,
        "dense_bytes": dense_bytes, "compressed_bytes": summary.file_bytes,
        "ratio": dense_bytes / summary.file_bytes, "files": {**files, "compressed": str(out / "model.slim")},
        "layers": [vars(lb) for lb in summary.layers],
    })
    console().print(f"accuracy {before.accuracy:.2%} → [bold]{after.accuracy:.2%}[/]; size {dense_bytes:,} B dense "
                    f"→ [bold]{summary.file_bytes:,} B[/] ({dense_bytes / summary.file_bytes:.1f}×), "
                    f"written to {out}")
    return 0


def _spec_with(spec: str, options: dict) -> str:
    """``spec`` with extra ``key=value`` options appended (the container records it to rebuild the model)."""
    from slimkit.models import parse_spec

    if not options:
        return spec
    extra = ",".join(f"{k}={v}" for k, v in options.items())
    return f"{spec},{extra}" if parse_spec(spec)[1] else f"{spec}:{extra}"
