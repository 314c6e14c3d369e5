"""The work of ``slimkit auto``: load the model and data as a recipe would, run the search with rich progress,
then run the chosen recipe with the recipe runner (``OUT/final``) and check that it reproduces the candidate."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from slimkit.cli._common import console, print_table


class AutoPrinter:
    """Draws the search's events: a progress bar per analysis step, a rule per candidate, one line per result."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}

    def _bar(self) -> Any:
        if self.progress is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=self.out, transient=False)
            self.progress.start()
        return self.progress

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
            self.tasks = {}

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "analysis":
            bar = self._bar()
            what = info["what"]
            if what not in self.tasks:
                self.tasks[what] = bar.add_task(f"analysis: {what}", total=max(info["total"], 1))
            bar.update(self.tasks[what], completed=info["done"] if info["total"] > 1 else 1)
            return
        self.close()
        if event == "candidate_start":
            plan = info["plan"]
            predicted = ", ".join(f"{k} {v:.3f}" for k, v in plan.predicted.items() if k != "delta")
            self.out.rule(f"[bold]candidate {info['index']}: {plan.format}[/] (predicted {predicted})")
            self.out.print(f"  {plan.summary()}")
        elif event == "candidate_reused":
            self.out.print(f"[dim]candidate {info['index']}: finished earlier, reused[/]")
        elif event == "stage":
            self.out.print(f"  stage {info['stage']}/{info['total']}: {info['name']}")
        elif event == "candidate_end":
            row = info["row"]
            self.out.print("  " + result_line(row))
        elif event == "note":
            self.out.print(f"[yellow]{info['text']}[/]")


def result_line(row: dict[str, Any]) -> str:
    from slimkit.analysis import format_ratio

    outcome = row["outcome"]
    latency = row.get("latency") or {}
    verdict = "[green]accepted[/]" if outcome["accepted"] else (
        "[red]budget missed[/]" if not outcome["budget_met"] else
        "[yellow]latency too noisy[/]" if not outcome["verified"] else
        "[yellow]accuracy below max-drop[/]" if not outcome["drop_ok"] else
        "[yellow]accuracy below min-accuracy[/]")
    lat = format_ratio(latency.get("ratio"), latency.get("status"), latency.get("p10"), latency.get("p90")) \
        if latency else "–"
    return (f"valid accuracy [bold]{row['accuracy']:.2%}[/] ({-outcome['drop']:+.2f} points), size ×"
            f"{row['ratios']['size']:.3f} ({row['bytes']:,} B), MACs ×{row['ratios']['macs']:.3f}, latency ×{lat}: "
            f"{verdict}")


def _load(args: argparse.Namespace, model_section: dict[str, Any], data_section: dict[str, Any]) -> tuple:
    """The model and data exactly as the recipe runner builds them from the same sections."""
    from slimkit.cli.auto import _subset
    from slimkit.data import create_data
    from slimkit.models import class_count_option, from_spec
    from slimkit.train import load_weights_, seed_everything

    d = data_section
    data = create_data(d["name"], batch_size=d["batch_size"], augment=False, seed=d["seed"],
                       calibration_size=d["calibration_size"])
    data.train = _subset(data.train, d.get("train_samples"), shuffle=True, seed=d["seed"])
    for split in ("valid", "test"):
        setattr(data, split, _subset(getattr(data, split), d.get("eval_samples")))
    seed_everything(args.seed)
    spec = model_section["spec"]
    model = from_spec(spec, allow_code=True, **class_count_option(spec, data.num_classes)).eval()
    if model_section.get("checkpoint"):
        load_weights_(model, model_section["checkpoint"])
    return model.eval(), data


def verify(result: Any, out: Path, *, spec: str, resume: bool, force: bool, printer: Any) -> dict[str, Any]:
    """Run ``OUT/recipe.yaml`` with the recipe runner into ``OUT/final`` and compare it with the chosen candidate:
    the same validation accuracy, MACs and deployed bytes (latency is measured anew, so it is reported, not
    compared). The recipe may import code only for ``spec``, the model the user typed."""
    from slimkit.auto._folder import write_json
    from slimkit.cli._common import stage_printer
    from slimkit.pipeline import load_recipe, run_recipe

    recipe = load_recipe(out / "recipe.yaml", trusted_specs=(spec,),
                         confirm="It was written by slimkit from the spec you typed, so it can only name that one: "
                                 "this file was changed after slimkit wrote it")
    final = out / "final"
    run = run_recipe(recipe, final, resume=resume and final.exists(), force=force or not resume,
                     reporter=stage_printer(printer.out, str(out / "recipe.yaml")))
    row = run.stages[-1]
    chosen = result.chosen
    deployed = row["bytes"] if chosen["format"] == "container" else row.get("onnx_bytes")
    checks = {"accuracy": (chosen["accuracy"], row["accuracy"]), "macs": (chosen["macs"], row["macs"]),
              "bytes": (chosen["bytes"], deployed)}
    same = {k: a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
            for k, (a, b) in checks.items()}
    report = {"reproduced": all(same.values()), "checks": {k: {"auto": a, "recipe": b, "same": same[k]}
                                                            for k, (a, b) in checks.items()},
              "recipe_latency": {k: row.get(k) for k in ("latency_ratio", "latency_p10", "latency_p90",
                                                         "latency_aa_ratio", "latency_status")},
              "run": str(final)}
    write_json(out / "verify.json", report)
    return report


def search_and_verify(args: argparse.Namespace, config: Any, model_section: dict[str, Any],
                      data_section: dict[str, Any]) -> int:
    from slimkit.auto import BudgetNotMet, auto_compress, auto_report

    out = console()
    model, data = _load(args, model_section, data_section)
    printer = AutoPrinter(out)
    folder = Path(args.out)
    try:
        compressed = auto_compress(model, data.example_input(1), config, data=data, out=folder, resume=args.resume,
                                   force=args.force, spec=args.model,
                                   recipe={"model": model_section, "data": data_section}, reporter=printer,
                                   progress=True)
        result = auto_report(compressed)
    except BudgetNotMet as error:
        printer.close()
        _summary(out, error.result)
        out.print(f"[red]{error}[/]")
        return 1
    finally:
        printer.close()
    _summary(out, result)
    status_ok = result.status == "met"
    reproduced = True
    if not args.no_verify:
        out.rule("[bold]reproducing the chosen recipe with the recipe runner (slimkit compress)[/]")
        check = verify(result, folder, spec=model_section["spec"], resume=args.resume, force=args.force,
                       printer=printer)
        reproduced = check["reproduced"]
        if reproduced:
            out.print(f"[green]reproduced[/]: {folder / 'recipe.yaml'} gives the same validation accuracy, MACs and "
                      f"deployed bytes ({check['run']})")
        else:
            out.print(f"[red]the recipe did not reproduce the candidate[/]: {check['checks']} (see "
                      f"{folder / 'verify.json'})")
    out.print(f"report: {result.files.get('report_html')}; recipe: {result.files.get('recipe')}; deployed file: "
              f"{result.files.get('deployed')}")
    if not status_ok:
        out.print(f"[yellow]status: {result.status}[/]")
    return 0 if status_ok and reproduced else 1


def _summary(out: Any, result: Any) -> None:
    from slimkit.analysis import format_ratio

    base = result.base
    rows = [("input", "onnx", f"{base['accuracy']:.2%}", "", "1.000", "1.000", "1.00", "")]
    for row in result.candidates:
        lat = row.get("latency") or {}
        chosen = "◀ chosen" if result.chosen is not None and row["index"] == result.chosen["index"] else ""
        rows.append((row["label"], row["format"], f"{row['accuracy']:.2%}", f"{-row['outcome']['drop']:+.2f}",
                     f"{row['ratios']['size']:.3f}", f"{row['ratios']['macs']:.3f}",
                     format_ratio(lat.get("ratio"), lat.get("status")) if lat else "–", chosen))
    print_table(f"auto {result.status}: candidates (validation accuracy; ratios to the input)",
                ["candidate", "format", "valid acc", "Δ points", "size ×", "MACs ×", "latency ×", ""], rows)
