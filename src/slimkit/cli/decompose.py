"""``slimkit decompose MODEL -c ckpt --method tucker2 svd --energy 0.9 --data mnist --out DIR``: low-rank
factorisation (+ fine-tune)."""

from __future__ import annotations

import argparse

from slimkit.cli._common import (
    add_data_args,
    add_finetune_args,
    add_latency_args,
    add_model_args,
    add_out_args,
    add_seed_arg,
    finetune_lr,
    real,
    recipe_of,
    run_command_recipe,
)


def _rank(text: str) -> int | list[int]:
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a rank: write R or R_OUT,R_IN") from None
    if any(p < 1 for p in parts) or len(parts) > 2:
        raise argparse.ArgumentTypeError(f"'{text}' is not a rank: write R or R_OUT,R_IN with positive numbers")
    return parts[0] if len(parts) == 1 else parts


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("decompose", help="factorise layers into thinner ones (SVD, Tucker-2, CP)")
    add_model_args(parser)
    parser.add_argument("--method", nargs="+", default=["tucker2", "svd"],
                        help="decompositions tried in order per layer: svd, tucker2, cp (default: tucker2 svd, "
                        "Kim et al. 2016)")
    rule = parser.add_mutually_exclusive_group(required=True)
    rule.add_argument("--rank", type=_rank, help="explicit rank: R for every mode, or R_OUT,R_IN for tucker2")
    rule.add_argument("--energy", type=real(0, 1, low_open=True),
                      help="keep the singular values holding this share of Σσ² (e.g. 0.9)")
    rule.add_argument("--ratio", type=real(0, 1, low_open=True),
                      help="target params of each decomposed layer ÷ original (e.g. 0.5)")
    rule.add_argument("--vbmf", action="store_true", help="ranks from analytic EVBMF (Nakajima et al. 2013)")
    add_data_args(parser)
    add_out_args(parser)
    parser.add_argument("--layers", nargs="+", help="layers to decompose: names, globs or re:regex (default: all)")
    parser.add_argument("--skip", nargs="+", default=[], help="layers to leave alone (names, globs or re:regex)")
    parser.add_argument("--allow-growth", action="store_true", help="decompose even where params would grow")
    add_finetune_args(parser, epochs=0)
    parser.add_argument("--grad-clip", type=real(0), default=None,
                        help="gradient-norm clip while fine-tuning (CP factors diverge without it; 0 disables; "
                             "default: 1.0)")
    add_seed_arg(parser)
    add_latency_args(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from slimkit.cli._common import CommandError
    from slimkit.decompose import DecomposeConfig

    if isinstance(args.rank, list) and list(args.method) != ["tucker2"]:
        raise CommandError(f"--rank {','.join(map(str, args.rank))} gives R_OUT,R_IN, which only method 'tucker2' "
                           f"takes, and this is --method {' '.join(args.method)}: give one rank (e.g. --rank "
                           f"{args.rank[0]}), or --method tucker2")
    lr = finetune_lr(args, ("--grad-clip", args.grad_clip))
    grad_clip = 1.0 if args.grad_clip is None else args.grad_clip
    options = {"method": list(args.method), "rank": args.rank, "energy": args.energy, "ratio": args.ratio,
               "vbmf": args.vbmf, "layers": list(args.layers) if args.layers else None, "skip": list(args.skip),
               "allow_growth": args.allow_growth, "seed": args.seed}
    DecomposeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
    stages = [{"decompose": options}]
    if args.finetune_epochs:
        stages.append({"finetune": {"epochs": args.finetune_epochs, "lr": lr, "grad_clip": grad_clip or None}})
    run_command_recipe(args, recipe_of(args, f"decompose {args.model} ({'+'.join(args.method)})", stages))
    return 0
