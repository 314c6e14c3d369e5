"""``slimkit decompose MODEL [-c ckpt] --method tucker2|cp|svd --rank R | --energy E | --ratio Q | --vbmf
--data mnist --out DIR [--finetune-epochs N]``.

Prints params, MACs and accuracy of the original model, right after the decomposition, and after fine-tuning; writes
the decomposed model's state dict and ONNX file plus ``decompose.json`` (per-layer ranks and counts, and the config
that rebuilds the architecture: ``decompose(model, x, DecomposeConfig(**config))`` then ``load_state_dict``).
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


def _rank(text: str) -> int | tuple[int, ...]:
    parts = [int(p) for p in text.split(",")]
    return parts[0] if len(parts) == 1 else tuple(parts)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from slimkit.decompose._methods import DECOMPOSITIONS

    parser = sub.add_parser("decompose", help="factorise layers into thinner ones (SVD, Tucker-2, CP)")
    add_model_args(parser)
    parser.add_argument("--method", nargs="+", default=["tucker2", "svd"], choices=DECOMPOSITIONS.names(),
                        help="decompositions tried in order per layer (default: tucker2 svd, Kim et al. 2016)")
    rule = parser.add_mutually_exclusive_group(required=True)
    rule.add_argument("--rank", type=_rank, help="explicit rank: R for every mode, or R_OUT,R_IN for tucker2")
    rule.add_argument("--energy", type=float, help="keep the singular values holding this share of Σσ² (e.g. 0.9)")
    rule.add_argument("--ratio", type=float, help="target params of each decomposed layer ÷ original (e.g. 0.5)")
    rule.add_argument("--vbmf", action="store_true", help="ranks from analytic EVBMF (Nakajima et al. 2013)")
    add_data_args(parser)
    add_out_args(parser)
    parser.add_argument("--layers", nargs="+", help="layers to decompose: names, globs or re:regex (default: all)")
    parser.add_argument("--skip", nargs="+", default=[], help="layers to leave alone (names, globs or re:regex)")
    parser.add_argument("--allow-growth", action="store_true", help="decompose even where params would grow")
    parser.add_argument("--finetune-epochs", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (SGD, cosine)")
    parser.add_argument("--grad-clip", type=float, default=1.0,
                        help="gradient-norm clip while fine-tuning (CP factors diverge without it; 0 disables)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    import slimkit
    from slimkit._cli_common import load_model
    from slimkit._errors import ConfigError
    from slimkit.analysis import evaluate, profile
    from slimkit.data import create_data
    from slimkit.decompose._decompose import DecomposeConfig, decompose, decompose_report, layers_to_decompose
    from slimkit.train import default_optimizer, fit

    if args.finetune_epochs < 0:
        raise ConfigError(f"--finetune-epochs must be ≥ 0, got {args.finetune_epochs}")
    config = DecomposeConfig(
        method=tuple(args.method), rank=args.rank, energy=args.energy, ratio=args.ratio, vbmf=args.vbmf,
        layers=tuple(args.layers) if args.layers else None, skip=tuple(args.skip), allow_growth=args.allow_growth,
        seed=args.seed,
    )
    torch.manual_seed(args.seed)
    data = create_data(args.data, batch_size=args.batch_size, seed=args.seed)
    model = load_model(args.model, args.checkpoint, **class_count_option(args.model, data.num_classes))
    example = data.example_input()
    layers_to_decompose(model, config)  # a bad layer name fails here, before the output folder is created
    out = prepare_out_dir(args.out, args.force)

    def row(stage: str, net) -> list:
        totals = profile(net, example).total
        return [stage, totals.params, totals.macs, float(evaluate(net, data.test).accuracy)]

    rows = [row("original", model)]
    result = decompose(model, example, config)
    rows.append(row("decomposed", result))
    if args.finetune_epochs:
        fit(result, data.train, epochs=args.finetune_epochs, optimizer=lambda p: default_optimizer(p, args.lr),
            scheduler="cosine", seed=args.seed, grad_clip=args.grad_clip or None)
        rows.append(row(f"after fine-tuning ({args.finetune_epochs} ep)", result.eval()))
    report = decompose_report(result)
    print_table("layers", ["layer", "method", "ranks", "params", "params after", "MACs", "MACs after", "error"],
                [[r.name, r.method or f"kept ({r.skipped})", ",".join(map(str, r.ranks)), r.params_before,
                  r.params_after, r.macs_before, r.macs_after, r.relative_error] for r in report.layers])
    print_table(f"{args.model} decomposed ({len(report.decomposed)} layers)", ["stage", "params", "MACs", "accuracy"],
                rows)
    files = save_model_files(result, example, out)
    write_json(out / "decompose.json", {
        "slimkit_version": slimkit.__version__, "model": args.model, "checkpoint": args.checkpoint,
        "config": dataclasses.asdict(config), "data": args.data,
        "layers": [dataclasses.asdict(r) for r in report.layers],
        "stages": [dict(zip(["stage", "params", "macs", "accuracy"], r, strict=True)) for r in rows], "files": files,
    })
    console().print(f"decomposed {len(report.decomposed)} layers; model written to {out}")
    return 0
