"""``slimkit distill --teacher SPEC -T ckpt --student SPEC --loss kd:T=20 --data mnist --out DIR``: the teacher is the
run's input model, the student is trained by one ``distill`` (or ``distill_stagewise``) stage."""

from __future__ import annotations

import argparse
from pathlib import Path

from slimkit.cli._common import (
    CommandError,
    add_augment_arg,
    add_data_args,
    add_latency_args,
    add_optimizer_args,
    add_out_args,
    add_seed_arg,
    check_input_file,
    console,
    count,
    optimizer_options,
    recipe_of,
    run_command_recipe,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "distill", help="train a student from a teacher (KD, attention transfer, hints, mimic, stage-wise)",
        description="Losses: kd[:T=4,alpha=0.9], at[:beta=1000,p=2], hint, mimic, ce; add weight=W to any. If no "
        "loss uses the labels (ce, or kd with alpha < 1), ce is added. Layer pairs are STUDENT=TEACHER module "
        "names (s.layer1=t.layer1 also accepted).",
    )
    parser.add_argument("--teacher", required=True, help="teacher model spec (lenet5, resnet56, file.py:factory)")
    parser.add_argument("--teacher-checkpoint", "-T", help="teacher weights (.pt / .safetensors), loaded weights-only")
    parser.add_argument("--student", required=True, help="student model spec (resnet20:width=0.5, mlp800, ...)")
    parser.add_argument("--student-checkpoint", help="initial student weights (e.g. a trained smaller model)")
    parser.add_argument("--loss", action="append", default=None, metavar="SPEC",
                        help="a loss (repeatable), e.g. --loss kd:T=20,alpha=0.9 --loss at:beta=1000 (default: kd)")
    parser.add_argument("--pairs", nargs="+", default=[], metavar="S=T", help="layer pairs for at/hint/mimic")
    parser.add_argument("--stagewise", action="store_true",
                        help="stage-wise reconstruction of the --pairs stages (in forward order), then the task "
                        "with --loss")
    parser.add_argument("--stage-epochs", type=count(0, 10_000), default=None,
                        help="epochs per stage with --stagewise (default: 1)")
    add_data_args(parser)
    add_augment_arg(parser)
    add_out_args(parser)
    parser.add_argument("--epochs", type=count(0, 10_000), default=5, help="training epochs (default: %(default)s)")
    add_optimizer_args(parser)
    parser.add_argument("--cache-teacher", action="store_true",
                        help="cache the teacher's logits per sample (kd without feature losses; halves the cost)")
    add_seed_arg(parser)
    add_latency_args(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from slimkit.distill import DistillConfig, LossSpec, ReconstructConfig

    if args.cache_teacher and args.augment:
        raise CommandError("--cache-teacher stores one teacher output per image, but --augment changes the images "
                           "every epoch: drop one of the two (augmented KD runs the teacher live)")
    if args.stage_epochs is not None and not args.stagewise:
        raise CommandError("--stage-epochs is for --stagewise distillation: add --stagewise, or drop --stage-epochs")
    specs = [LossSpec.parse(text) for text in (args.loss or ["kd"])]
    built = [spec.build() for spec in specs]  # unknown names or options fail here, before any data or training work
    feature = next((spec.name for spec, loss in zip(specs, built) if loss.uses_features), None)
    if args.stagewise:
        if args.cache_teacher:
            raise CommandError("--cache-teacher is for distillation from the teacher's logits; --stagewise "
                               "reconstructs the teacher's features and runs the teacher live: drop --cache-teacher")
        if not args.pairs:
            raise CommandError("--stagewise reconstructs the stages --pairs names, one after another: give --pairs "
                               "S=T ... (student=teacher stage names, in forward order)")
        if feature is not None:
            raise CommandError(f"--stagewise trains the task with --loss after the stages, without layer pairs, and "
                               f"'{feature}' compares features: use --loss ce or kd with --stagewise")
    elif feature is not None and not args.pairs:
        raise CommandError(f"--loss {feature} compares features: give the layers with --pairs S=T (student=teacher "
                           "module names)")
    elif feature is None and args.pairs:
        raise CommandError("--pairs names the layers of a feature loss (at, hint, mimic) or the stages of "
                           "--stagewise, and no --loss compares features: add such a --loss or --stagewise, or drop "
                           "--pairs")
    elif feature is not None and args.cache_teacher:
        raise CommandError(f"--cache-teacher stores the teacher's logits only, but --loss {feature} needs the "
                           "teacher's features every batch: drop --cache-teacher")
    trains = bool(args.epochs or (args.stagewise and (1 if args.stage_epochs is None else args.stage_epochs)))
    optimizer = optimizer_options(args, trains=trains, nothing="--epochs is 0" + (
        " and --stage-epochs 0" if args.stagewise else ""))
    losses = list(args.loss or ["kd"])
    if not any(loss.uses_targets for loss in built):
        losses.append("ce")  # the task loss, as in every paper's total (e.g. Zagoruyko & Komodakis Eq. 2)
    roles = {"student": args.student, "teacher": "input"}
    if args.student_checkpoint is not None:  # an empty path is refused, not read as none
        roles["student_checkpoint"] = str(check_input_file(args.student_checkpoint, "student checkpoint").resolve())
    if args.stagewise:
        options = {"stages": list(args.pairs), "epochs": args.epochs, "task_losses": losses, **optimizer,
                   "seed": args.seed}
        if args.stage_epochs is not None:
            options["stage_epochs"] = args.stage_epochs
        ReconstructConfig(**{**options, "stages": tuple(args.pairs), "task_losses": tuple(losses)})
        stage = {"distill_stagewise": {**roles, **options}}
    else:
        options = {"losses": losses, "pairs": list(args.pairs), "epochs": args.epochs, **optimizer,
                   "cache_teacher": args.cache_teacher, "seed": args.seed}
        DistillConfig(**{**options, "losses": tuple(losses), "pairs": tuple(args.pairs)})
        stage = {"distill": {**roles, **options}}
    data = {"augment": args.augment} if args.augment else {}
    from slimkit.models import is_code_spec

    # a registered name or hf: spec is built untrained (a save_pretrained folder or the user's code may hold weights)
    if not args.teacher_checkpoint and not is_code_spec(args.teacher) and not Path(args.teacher).is_dir():
        console().print(f"[yellow]note: no --teacher-checkpoint, so the teacher '{args.teacher}' has random weights "
                        "and there is nothing to distil from it: pass its trained weights with -T[/]")
    recipe = recipe_of(args, f"distill {args.teacher} → {args.student}", [stage], model=args.teacher,
                       checkpoint=args.teacher_checkpoint, data=data)
    run_command_recipe(args, recipe)
    return 0
