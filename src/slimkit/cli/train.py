"""``slimkit train MODEL --data mnist --epochs N --out DIR``: a one-stage recipe (``train``), also under torchrun."""

from __future__ import annotations

import argparse

from slimkit.cli._common import (
    add_augment_arg,
    add_data_args,
    add_model_args,
    add_optimizer_args,
    add_out_args,
    add_seed_arg,
    count,
    optimizer_options,
    recipe_of,
    run_command_recipe,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train a model on a dataset (also under torchrun)",
                            description="Train with SGD (Nesterov momentum 0.9) and a one-cycle cosine schedule; "
                            "writes the run folder (model.pt, model.onnx, metrics.json, report, recipe.yaml).")
    add_model_args(parser)
    add_data_args(parser)
    add_out_args(parser)
    parser.add_argument("--epochs", type=count(0, 10_000), default=5, help="training epochs (default: %(default)s)")
    add_optimizer_args(parser)
    add_augment_arg(parser)
    add_seed_arg(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    optimizer = optimizer_options(args, trains=bool(args.epochs), nothing="--epochs is 0")
    stages = [{"train": {"epochs": args.epochs, **optimizer}}]
    data = {"augment": args.augment} if args.augment else {}
    # the input model is untrained: its latency is the trained model's, so the comparison would time nothing
    recipe = recipe_of(args, f"train {args.model}", stages, data=data, evaluation={"latency": False})
    run_command_recipe(args, recipe)
    return 0
