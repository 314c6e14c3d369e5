"""``slimkit prune MODEL -c ckpt --ratio 0.5 --criterion thinet --data mnist --out DIR``: prune (+ fine-tune)."""

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
    latency_batch,
    real,
    recipe_of,
    run_command_recipe,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("prune", help="structured channel pruning (physically smaller layers)")
    add_model_args(parser)
    add_data_args(parser)
    add_out_args(parser)
    parser.add_argument("--ratio", type=real(),
                        help="fraction of each channel group removed, in [0, 1) (default: 0.5; not with --speedup "
                             "or --latency, which choose it)")
    parser.add_argument("--criterion", default="l1",
                        help="importance criterion: l1, l2, random, bn_scale, taylor, fpgm, thinet (default: l1)")
    parser.add_argument("--scope", default=None, choices=["layer", "global"],
                        help="layer: remove --ratio of every group; global: rank the units of all groups together "
                             "(default: layer; not with --latency or --schedule layerwise, which set each group's "
                             "width themselves)")
    parser.add_argument("--speedup", type=real(1, None, low_open=True),
                        help="instead of --ratio: reach this MAC reduction factor (> 1)")
    parser.add_argument("--latency", type=real(0, 1, low_open=True, high_open=True),
                        help="instead of --ratio: reach this fraction of the model's latency in --runtime at "
                             "--latency-batch with --threads (a measured latency table, cached per machine)")
    parser.add_argument("--round-to", type=count(1, 4096), default=None,
                        help="keep channel counts a multiple of this (default: 1; not with --latency, whose widths "
                             "are the kernels' own steps)")
    parser.add_argument("--skip", nargs="*", default=[], help="layers never pruned (names, globs, re:regex)")
    parser.add_argument("--protect-first", action="store_true", help="never prune the first layer")
    parser.add_argument("--schedule", default="oneshot", choices=["oneshot", "layerwise"],
                        help="layerwise = one group at a time with least-squares reconstruction (by --ratio: not "
                             "with --speedup or --latency)")
    add_finetune_args(parser, epochs=0)
    add_seed_arg(parser)
    add_latency_args(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from slimkit.cli._common import CommandError
    from slimkit.prune import PruneConfig

    targets = [flag for flag, value in (("--speedup", args.speedup), ("--latency", args.latency)) if value is not None]
    if len(targets) == 2:
        raise CommandError("--speedup and --latency both set the amount of pruning: give one of them")
    target = targets[0] if targets else None
    if args.ratio is not None and target is not None:
        raise CommandError(f"--ratio and {target} both set the amount of pruning: give one of them")
    if args.schedule == "layerwise" and target is not None:
        raise CommandError(f"--schedule layerwise prunes one group at a time by --ratio, so it cannot search for "
                           f"{target}: drop {target} (and give --ratio), or use --schedule oneshot")
    if args.scope is not None and (args.latency is not None or args.schedule == "layerwise"):
        why = "--latency chooses every group's width from the latency table" if args.latency is not None else \
            "--schedule layerwise prunes each group by --ratio on its own"
        raise CommandError(f"--scope ranks channels within each group or across groups, but {why}: drop --scope")
    if args.round_to is not None and args.latency is not None:
        raise CommandError("--round-to rounds the widths --ratio or --speedup choose, but --latency keeps widths at "
                           "the steps where the kernels' time changes (measured): drop --round-to")
    lr = finetune_lr(args)
    options = {"criterion": args.criterion, "scope": args.scope or "layer", "speedup": args.speedup,
               "round_to": args.round_to or 1, "skip": list(args.skip), "protect_first": args.protect_first,
               "seed": args.seed}
    if args.ratio is not None:
        options["ratio"] = args.ratio
    if args.latency is not None:
        # timed in --runtime: the recipe's evaluation.runtime, which a target naming no runtime follows
        options["target_latency"] = {"ratio": args.latency, "batch": latency_batch(args, args.data),
                                     "threads": args.threads or 1}
    PruneConfig(**options).validate()  # the library's own message for a bad value, before any work
    stages = [{"prune": {**options, "schedule": args.schedule}}]
    if args.finetune_epochs:
        stages.append({"finetune": {"epochs": args.finetune_epochs, "lr": lr}})
    recipe = recipe_of(args, f"prune {args.model} ({args.criterion})", stages,
                       stages_time_latency=args.latency is not None)
    run_command_recipe(args, recipe, flags={"skip": "--skip", "round_to": "--round-to"})
    return 0
