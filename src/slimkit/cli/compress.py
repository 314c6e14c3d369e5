"""``slimkit compress RECIPE --out DIR [--resume] [--force]``: run a YAML recipe with a report at the end."""

from __future__ import annotations

import argparse

from slimkit.cli._common import add_resume_force_args, count


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("compress", help="run a YAML recipe of compression stages (see recipes/)")
    parser.add_argument("recipe", nargs="?", help="recipe file (version: 1, model, data, stages)")
    parser.add_argument("--out", "-o", help="run folder: new or empty, or an earlier run (see --resume, --force)")
    add_resume_force_args(parser)
    parser.add_argument("--check", action="store_true",
                        help="only check the recipe: the model builds, the checkpoint loads, the model fits the "
                             "data, each stage's own checks; runs nothing and writes nothing but the dataset "
                             "cache")
    parser.add_argument("--train-samples", type=count(1), metavar="N",
                        help="override the recipe's data: train on the first N training samples (a quick try)")
    parser.add_argument("--eval-samples", type=count(1), metavar="N",
                        help="override the recipe's data: evaluate on the first N samples (a quick try)")
    parser.add_argument("--list-stages", action="store_true", help="list the stage names a recipe can use")
    parser.add_argument("--trust-spec", action="append", default=[], metavar="FILE.py:FACTORY",
                        help="a model of your own code the recipe names (model or distillation student): type its "
                             "spec to allow importing it; slimkit never imports code a file names by itself")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from slimkit.cli._common import CommandError, console, print_table, stage_printer
    from slimkit.pipeline import STAGES, check_recipe, load_recipe, run_recipe
    from slimkit.report import columns, table_rows

    out = console()
    if args.list_stages:
        print_table("recipe stages", ["stage", "what it does"], [(n, STAGES.get(n).summary) for n in STAGES.names()])
        return 0
    if not args.recipe:
        raise CommandError("give a recipe file (e.g. recipes/deep-compression-lenet5.yaml), or --list-stages")
    recipe = load_recipe(args.recipe, trusted_specs=tuple(args.trust_spec))
    overrides = {k: getattr(args, k) for k in ("train_samples", "eval_samples") if getattr(args, k)}
    if overrides:
        recipe = recipe.with_data(**overrides)
    if args.check:
        check_recipe(recipe)
        out.print(f"{args.recipe}: valid recipe with {len(recipe.stages)} stage(s): "
                  + ", ".join(s.name for s in recipe.stages))
        for spec in recipe.code_specs():
            out.print(f"note: the recipe names your own Python code, '{spec}' (trusted with --trust-spec): running "
                      "it imports that file")
        return 0
    if not args.out:
        raise CommandError("--out DIR is required: the folder for checkpoints, metrics and the report")
    result = run_recipe(recipe, args.out, resume=args.resume, force=args.force,
                        reporter=stage_printer(out, args.recipe))
    print_table(recipe.title, list(columns(result.stages)), table_rows(result.stages))
    out.print(f"report: {result.files.get('report_html')} (and report.md, metrics.json, model.pt, model.onnx in "
              f"{result.out})")
    return 0
