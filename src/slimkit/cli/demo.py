"""``slimkit demo``: the main job on the bundled MNIST default.

Step 1 trains (or reuses a cached checkpoint of) LeNet-5 on MNIST and prints its profile, accuracy and latency.
Step 2 runs one representative recipe of each compression family on that baseline with the recipe runner
(``slimkit.pipeline``) and prints one comparison table; every run folder and a combined report are in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from slimkit._io import cache_root
from slimkit.cli._common import console, folder, print_profile, print_table, stage_printer, write_json

DEMO_EPOCHS = 5
# 2 epochs on 20k images reach ~97.7% test accuracy in ~11 s; 1 epoch on 10k stopped at ~92%, too weak a baseline
QUICK_EPOCHS, QUICK_SAMPLES = 2, 20_000
MARKER = "demo.json"
#: the names the demo's folder holds
OWNED = frozenset({MARKER, "metrics.json", "report.md", "report.html", "plots", "runs"})


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="train/reuse LeNet-5 on MNIST, then compress it with every technique family")
    parser.add_argument("--quick", action="store_true",
                        help="subsets, fewer epochs and repeats (about a minute on 2 cores; reuses a cached full "
                        "baseline)")
    parser.add_argument("--retrain", action="store_true", help="ignore the cached baseline and train again")
    parser.add_argument("--out", default=None, type=folder,
                        help="folder for the demo's runs and report (default: slimkit-demo)")
    parser.add_argument("--only", nargs="+", metavar="FAMILY", help="run only these families (see --list)")
    parser.add_argument("--list", action="store_true", help="list the demo's families and exit")
    parser.set_defaults(run=run)


def trained_baseline(name: str, epochs: int, *, retrain: bool = False, train_samples: int | None = None):
    """A model trained on MNIST by ``fit`` (SGD lr 0.05, one-cycle cosine), cached by name, epochs and subset;
    returns (model, data, checkpoint path)."""
    from slimkit import models
    from slimkit.data import TensorLoader, create_data
    from slimkit.train import FitConfig, fit, load_weights_, save_checkpoint

    data = create_data("mnist", batch_size=128)
    model = models.create(name)
    subset = f"-n{train_samples}" if train_samples else ""
    path = cache_root() / f"{name}-mnist-e{epochs}{subset}.pt"
    if path.is_file() and not retrain:
        load_weights_(model, path)
        console().print(f"reusing the cached baseline {path}")
    else:
        what = f"the first {train_samples:,} images of MNIST" if train_samples else "MNIST"
        console().print(f"training {name} on {what} for {epochs} epochs (cached at {path} for next time)")
        import torch

        torch.manual_seed(0)
        train = data.train
        if train_samples:
            train = TensorLoader(train.inputs[:train_samples], train.targets[:train_samples], 128, shuffle=True)
        fit(model, train, **FitConfig(epochs=epochs, lr=0.05, progress=True).fit_options(), val_loader=data.valid)
        save_checkpoint(model.state_dict(), path)
    return model.eval(), data, path


def baseline_plan(quick: bool, retrain: bool) -> tuple[int, int | None]:
    """(epochs, training subset) of the demo's baseline: the full 5-epoch model, or for ``--quick`` a 2-epoch model
    on 20,000 images unless the full one is already cached (then ``--quick`` reuses it)."""
    full = cache_root() / f"lenet5-mnist-e{DEMO_EPOCHS}.pt"
    if not quick or (full.is_file() and not retrain):
        return DEMO_EPOCHS, None
    return QUICK_EPOCHS, QUICK_SAMPLES


@dataclass(frozen=True)
class Family:
    """One representative recipe of a technique family; ``stages`` lists the stage names it needs."""

    name: str
    title: str
    stages: tuple[str, ...]
    body: str  # the recipe's stage list; {ft}: fine-tuning epochs, {student_ft} / {student_lr}: from-scratch student


#: The demo's built-in recipe set, one per family (a family whose stages are not available is left out).
FAMILIES: tuple[Family, ...] = (
    Family("prune", "ThiNet channel pruning + fine-tune", ("prune", "finetune"), """
  - prune: {ratio: 0.5, criterion: thinet}
  - finetune: {epochs: {ft}, lr: 0.01}
"""),
    Family("quantize", "int8 post-training quantization", ("quantize",), """
  - quantize: {method: ptq}
"""),
    Family("decompose", "Tucker-2 (conv) + SVD (fc) + fine-tune", ("decompose", "finetune"), """
  - decompose: {method: [tucker2, svd], energy: 0.9}
  - finetune: {epochs: {ft}, lr: 0.005}
"""),
    Family("cluster", "k-means sharing (16 values/layer) + Huffman", ("cluster",), """
  - cluster: {bits: 4}
"""),
    Family("convert", "depthwise-separable rewrite + fine-tune", ("convert", "finetune"), """
  - convert: {to: depthwise_separable}
  - finetune: {epochs: {ft}, lr: 0.01}
"""),
    Family("distill", "Hinton KD into LeNet-300-100", ("distill",), """
  - distill: {student: lenet300, teacher: input, losses: ["kd:T=4,alpha=0.9"], epochs: {student_ft}, lr: {student_lr}}
"""),
    Family("hybrid", "L1 prune → KD → int8 (hybrid)", ("prune", "distill", "quantize"), """
  - prune: {ratio: 0.5, criterion: l1}
  - distill: {teacher: input, losses: ["kd:T=4,alpha=0.9"], epochs: {ft}, lr: 0.01}
  - quantize: {method: ptq}
"""),
)


def available_families() -> list[Family]:
    from slimkit.pipeline import STAGES

    return [f for f in FAMILIES if all(s in STAGES for s in f.stages)]


def family_recipe(family: Family, checkpoint: Path, quick: bool) -> str:
    """The YAML text of a family's recipe on the cached baseline."""
    data = "{name: mnist, train_samples: 5000, eval_samples: 1000}" if quick else "{name: mnist}"
    repeats = 10 if quick else 30
    # a student trained from scratch needs more steps than a fine-tune of the trained baseline; on the 5,000-image
    # subset lr 0.1 diverged for some seeds (10.7% after 4 epochs with seed 2, 73% on CI's machine), 0.05 for 6 epochs
    # reached 93.2-93.8% over seeds 0-2
    student_epochs, student_lr = ("6", "0.05") if quick else ("3", "0.1")
    body = (family.body.replace("{ft}", "1").replace("{student_ft}", student_epochs)
            .replace("{student_lr}", student_lr))
    return (f"version: 1\nname: {family.title}\nmodel: {{spec: lenet5, checkpoint: {json.dumps(str(checkpoint))}}}\n"
            f"data: {data}\nevaluation: {{repeats: {repeats}, warmup: 3}}\nstages:{body}")


def _prepare_demo_out(out: Path) -> None:
    from slimkit._errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file: give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ConfigError(f"--out '{out}' is not empty and not an earlier demo's folder: choose a new folder")
    if out.is_dir():
        from slimkit._io import refuse_links

        refuse_links(out)  # an earlier demo's folder: any link in it was planted
    out.mkdir(parents=True, exist_ok=True)


def baseline_step(args: argparse.Namespace):
    """Step 1 (the demo's original behaviour): the baseline's profile, accuracy and latency."""
    from slimkit.analysis import evaluate, latency, profile

    epochs, samples = baseline_plan(args.quick, args.retrain)
    model, data, path = trained_baseline("lenet5", epochs, retrain=args.retrain, train_samples=samples)
    example = data.example_input()
    prof = profile(model, example)
    print_profile(prof, title="LeNet-5 (Caffe variant) on 1×28×28")
    test = evaluate(model, data.test)
    repeats = 20 if args.quick else 100
    rows = []
    for backend in ("torch", "onnxruntime"):
        for batch in (1, 64):
            lat = latency(model, data.example_input(batch), backend=backend, threads=2, repeats=repeats)
            rows.append((backend, batch, lat.median_ms, lat.p10_ms, lat.p90_ms))
    print_table("latency (2 threads, ms)", ["backend", "batch", "median", "p10", "p90"], rows)
    console().print(
        f"MNIST test accuracy [bold]{test.accuracy:.2%}[/] ({test.errors} errors of {test.samples}); "
        f"{prof.total.params:,} params, {prof.total.macs:,} MACs, {prof.total.bytes / 1024:.0f} KiB at fp32"
    )
    return path


def run(args: argparse.Namespace) -> int:
    import torch

    from slimkit._errors import ConfigError
    from slimkit.pipeline import parse_recipe, run_recipe
    from slimkit.report import columns, table_rows, write_report

    if args.list:
        given = [flag for flag, value in (("--quick", args.quick), ("--retrain", args.retrain), ("--only", args.only),
                                          ("--out", args.out is not None)) if value]
        if given:
            from slimkit.cli._common import CommandError

            raise CommandError(f"--list only lists the demo's families and runs nothing: drop {' and '.join(given)}, "
                               "or drop --list")
    torch.set_num_threads(2)
    families = available_families()
    if args.list:
        print_table("demo families", ["family", "recipe", "stages"], [(f.name, f.title, " → ".join(f.stages))
                                                                       for f in families])
        return 0
    if args.only:
        unknown = sorted(set(args.only) - {f.name for f in families})
        if unknown:
            raise ConfigError(f"unknown demo family {', '.join(unknown)}: choose from "
                              f"{', '.join(f.name for f in families)}")
        families = [f for f in families if f.name in args.only]
    out = Path(args.out or "slimkit-demo")
    _prepare_demo_out(out)
    started = time.perf_counter()
    checkpoint = baseline_step(args)

    cons = console()
    rows: list[dict] = []
    for family in families:
        cons.rule(f"[bold]{family.title}")
        text = family_recipe(family, checkpoint.resolve(), args.quick)
        recipe = parse_recipe(text, f"<demo:{family.name}>")
        run_dir = out / "runs" / family.name
        # one combined report for the demo at the end; each run folder keeps its metrics, models and recipe
        result = run_recipe(recipe, run_dir, force=True, reporter=stage_printer(cons, str(run_dir / "recipe.yaml")),
                            report=False)
        if not rows:
            rows.append({**result.stages[0], "label": "baseline"})
        rows.append({**result.stages[-1], "label": family.name, "title": family.title})
    metrics = {"title": "slimkit demo: LeNet-5 on MNIST", "stages": rows, "quick": args.quick,
               "families": [f.name for f in families]}
    write_json(out / "metrics.json", metrics)
    legend = "\n".join(f"- **{f.name}**: {f.title} (run folder runs/{f.name})" for f in families)
    files = write_report(out, metrics, extra_markdown=legend) if rows else {}
    write_json(out / MARKER, {"quick": args.quick, "families": [f.name for f in families]})
    if rows:
        print_table("compressed LeNet-5 variants (latency: ONNX Runtime, ratio to the baseline in the same run)",
                    list(columns(rows)), table_rows(rows))
    cons.print(f"demo finished in {time.perf_counter() - started:.0f} s; report: {files.get('report_html', '–')}, "
               f"runs in {out / 'runs'}")
    return 0
