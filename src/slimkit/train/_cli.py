"""``slimkit train MODEL --data mnist --epochs N --out DIR``."""

from __future__ import annotations

import argparse

from slimkit._cli_common import (
    add_augment_arg,
    add_data_args,
    add_model_args,
    add_optimizer_args,
    add_out_args,
    class_count_option,
    console,
    prepare_out_dir,
    save_model_files,
    write_json,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train a model on a dataset (also under torchrun)")
    add_model_args(parser)
    add_data_args(parser)
    add_out_args(parser)
    parser.add_argument("--epochs", type=int, default=5)
    add_optimizer_args(parser)
    add_augment_arg(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from slimkit._cli_common import load_model
    from slimkit.data import create_data
    from slimkit.train import default_optimizer, dist_info, evaluate, fit, init_distributed
    from slimkit.train._fit import check_optimizer_values

    check_optimizer_values(args.lr, args.weight_decay)
    info = init_distributed()
    data = create_data(args.data, batch_size=args.batch_size, augment=args.augment, seed=args.seed)
    model = load_model(args.model, args.checkpoint, **class_count_option(args.model, data.num_classes))
    out = prepare_out_dir(args.out, args.force or args.resume) if info.is_main else None
    result = fit(
        model, data.train, epochs=args.epochs, optimizer=lambda p: default_optimizer(p, args.lr, args.weight_decay),
        scheduler="cosine", val_loader=data.valid, checkpoint_dir=args.out, resume=args.resume, seed=args.seed,
    )
    if not dist_info().is_main:
        return 0
    test = evaluate(model, data.test)
    files = save_model_files(model, data.example_input(), out)
    write_json(out / "metrics.json", {"history": result.history, "test": test.to_dict(), "files": files})
    console().print(f"test accuracy [bold]{test.accuracy:.2%}[/] ({test.errors} errors of {test.samples}); "
                    f"model written to {out}")
    return 0
