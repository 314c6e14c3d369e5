"""``slimkit prune MODEL --ratio 0.5 --criterion thinet --data mnist --out DIR [-c ckpt]``."""

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
    from slimkit.prune._criteria import CRITERIA

    parser = sub.add_parser("prune", help="structured channel pruning (physically smaller layers)")
    add_model_args(parser)
    add_data_args(parser)
    add_out_args(parser)
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of each channel group removed, in [0, 1)")
    parser.add_argument("--criterion", default="l1", help=f"one of {', '.join(CRITERIA.names())}")
    parser.add_argument("--scope", default="layer", choices=["layer", "global"])
    parser.add_argument("--speedup", type=float, help="instead of --ratio: reach this MAC reduction factor")
    parser.add_argument("--round-to", type=int, default=1, help="keep channel counts a multiple of this")
    parser.add_argument("--skip", nargs="*", default=[], help="layers never pruned (names, globs, re:regex)")
    parser.add_argument("--protect-first", action="store_true", help="never prune the first layer")
    parser.add_argument("--schedule", default="oneshot", choices=["oneshot", "layerwise"],
                        help="layerwise = one group at a time with least-squares reconstruction")
    parser.add_argument("--finetune-epochs", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from slimkit._cli_common import load_model
    from slimkit.analysis import evaluate, profile
    from slimkit.data import create_data
    from slimkit.prune._config import PruneConfig
    from slimkit.prune._schedule import prune_layerwise, prune_oneshot
    from slimkit.prune._structured import pruning_info

    config = PruneConfig(ratio=args.ratio, criterion=args.criterion, scope=args.scope, speedup=args.speedup,
                         round_to=args.round_to, skip=tuple(args.skip), protect_first=args.protect_first,
                         seed=args.seed).validate()
    data = create_data(args.data, batch_size=args.batch_size, seed=args.seed)
    model = load_model(args.model, args.checkpoint, **class_count_option(args.model, data.num_classes))
    out = prepare_out_dir(args.out, args.force)
    example = data.example_input(1)
    if args.schedule == "layerwise":
        pruned = prune_layerwise(model, example, config, data=data.calibration)
    else:
        pruned = prune_oneshot(model, example, config, data=data.calibration, train=data.train,
                               epochs=args.finetune_epochs, seed=args.seed)
    pruned.eval()
    before, after = profile(model, example).total, profile(pruned, example).total
    acc_before, acc_after = evaluate(model, data.test), evaluate(pruned, data.test)
    files = save_model_files(pruned, example, out)
    info = pruning_info(pruned) or {}
    summary = {
        "model": args.model, "config": info.get("config"), "files": files,
        "before": {"params": before.params, "macs": before.macs, "accuracy": acc_before.accuracy},
        "after": {"params": after.params, "macs": after.macs, "accuracy": acc_after.accuracy},
        "groups": info.get("groups"), "keep": info.get("keep"),
    }
    write_json(out / "pruning.json", summary)
    print_table(f"prune {args.model} ({args.criterion}, ratio {args.ratio})", ["", "params", "MACs", "accuracy"], [
        ("before", before.params, before.macs, f"{acc_before.accuracy:.2%}"),
        ("after", after.params, after.macs, f"{acc_after.accuracy:.2%}"),
        ("ratio", f"{after.params / before.params:.3f}", f"{after.macs / before.macs:.3f}", ""),
    ])
    console().print(f"pruned model written to {out} (model.pt state dict, model.onnx, pruning.json)")
    return 0
