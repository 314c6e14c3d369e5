"""``slimkit distill --teacher SPEC --student SPEC --loss kd:T=20 --data mnist --epochs N --out DIR``."""

from __future__ import annotations

import argparse

from slimkit._cli_common import (
    CommandError,
    add_augment_arg,
    add_data_args,
    add_optimizer_args,
    add_out_args,
    class_count_option,
    console,
    prepare_out_dir,
    print_table,
    save_model_files,
    write_json,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "distill", help="train a student from a teacher (KD, attention transfer, hints, mimic, stage-wise)",
        description="Losses: kd[:T=4,alpha=0.9], at[:beta=1000,p=2], hint, mimic, ce; add weight=W to any. If no "
        "loss uses the labels (ce, or kd with alpha < 1), ce is added. Layer pairs are STUDENT=TEACHER module "
        "names (s.layer1=t.layer1 also accepted).",
    )
    parser.add_argument("--teacher", required=True, help="teacher model spec (lenet5, resnet56, file.py:factory)")
    parser.add_argument("--teacher-checkpoint", help="teacher weights (.pt / .safetensors), loaded weights-only")
    parser.add_argument("--student", required=True, help="student model spec (resnet20:width=0.5, mlp800, ...)")
    parser.add_argument("--student-checkpoint", help="initial student weights (e.g. a pruned model)")
    parser.add_argument("--loss", action="append", default=None, metavar="SPEC",
                        help="a loss (repeatable), e.g. --loss kd:T=20,alpha=0.9 --loss at:beta=1000")
    parser.add_argument("--pairs", nargs="+", default=[], metavar="S=T", help="layer pairs for at/hint/mimic")
    parser.add_argument("--stagewise", action="store_true",
                        help="stage-wise reconstruction of the --pairs stages (in forward order), then the task "
                        "with --loss")
    parser.add_argument("--stage-epochs", type=int, default=1, help="epochs per stage with --stagewise")
    add_data_args(parser)
    add_augment_arg(parser)
    add_out_args(parser)
    parser.add_argument("--epochs", type=int, default=5)
    add_optimizer_args(parser)
    parser.add_argument("--cache-teacher", action="store_true",
                        help="cache the teacher's logits per sample (kd without feature losses; halves the cost)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from slimkit._cli_common import load_model
    from slimkit.analysis import evaluate
    from slimkit.data import create_data
    from slimkit.distill._distiller import DistillConfig, Distiller
    from slimkit.distill._losses import LossSpec
    from slimkit.distill._stagewise import ReconstructConfig, reconstruct
    from slimkit.train import dist_info, init_distributed
    from slimkit.train._fit import check_optimizer_values

    check_optimizer_values(args.lr, args.weight_decay)
    if args.cache_teacher and args.augment:
        raise CommandError("--cache-teacher stores one teacher output per image, but --augment changes the images "
                           "every epoch: drop one of the two (augmented KD runs the teacher live)")
    info = init_distributed()
    data = create_data(args.data, batch_size=args.batch_size, augment=args.augment, seed=args.seed)
    teacher = load_model(args.teacher, args.teacher_checkpoint, **class_count_option(args.teacher, data.num_classes))
    student = load_model(args.student, args.student_checkpoint, **class_count_option(args.student, data.num_classes))
    specs = [LossSpec.parse(text) for text in (args.loss or ["kd"])]
    for spec in specs:
        spec.build()  # unknown names or options fail here, before any data or training work
    if not any(s.build().uses_targets for s in specs):
        specs.append(LossSpec("ce"))  # the task loss, as in every paper's total (e.g. Zagoruyko & Komodakis Eq. 2)
    example = next(iter(data.train))[0][:2]
    if args.stagewise:
        if args.resume:
            raise CommandError("--resume is not supported with --stagewise: run it again into a new --out")
        stage_config = ReconstructConfig(
            stages=tuple(args.pairs), stage_epochs=args.stage_epochs, task_epochs=args.epochs,
            task_losses=tuple(specs), lr=args.lr, weight_decay=args.weight_decay, checkpoint_dir=args.out,
            seed=args.seed, progress=True)
        Distiller(teacher, student, DistillConfig(losses=("mimic",), pairs=tuple(args.pairs)))  # checks the names
    else:
        config = DistillConfig(losses=tuple(specs), pairs=tuple(args.pairs), epochs=args.epochs, lr=args.lr,
                               weight_decay=args.weight_decay,
                               cache_teacher=args.cache_teacher, checkpoint_dir=args.out, resume=args.resume,
                               seed=args.seed, progress=True)
        distiller = Distiller(teacher, student, config)
        distiller.check(example)  # names, shapes and class counts fail here, before any training
    out = prepare_out_dir(args.out, args.force or args.resume) if info.is_main else None
    test_before = evaluate(teacher, data.test)
    if args.stagewise:
        student, histories = reconstruct(teacher, student, data.train, stage_config)
        history = [h.history for h in histories]
    else:
        history = distiller.fit(data.train, val_loader=data.valid).history
    if not dist_info().is_main:
        return 0
    assert out is not None
    test = evaluate(student, data.test)
    files = save_model_files(student, data.example_input(), out, name="student")
    write_json(out / "metrics.json", {
        "teacher": {"spec": args.teacher, "test": test_before.to_dict()},
        "student": {"spec": args.student, "test": test.to_dict()},
        "losses": [{"name": s.name, "weight": s.weight, **s.params} for s in specs],
        "pairs": args.pairs, "stagewise": args.stagewise, "history": history, "files": files,
    })
    print_table("distillation", ["model", "test accuracy", "errors"], [
        (f"teacher {args.teacher}", f"{test_before.accuracy:.2%}", test_before.errors),
        (f"student {args.student}", f"{test.accuracy:.2%}", test.errors),
    ])
    console().print(f"student written to {out}")
    return 0
