"""Running a recipe: stages in order, measured after each, checkpointed after each, resumable.

The run folder
--------------
::

    DIR/recipe.yaml              the recipe as given
    DIR/run.json                 run id, the resolved recipe and its fingerprint, slimkit version, status
    DIR/stages/00-input/         the input model: model.pt (its weights, copied), model.onnx, result.json
    DIR/stages/NN-<stage>/       model.pt (state dict after the stage), model.onnx, profile.json, result.json
    DIR/model.pt, model.onnx     the final model; metrics.json, report.md, report.html, plots/

How a model whose architecture changed is saved and loaded again
----------------------------------------------------------------
A state dict alone cannot rebuild a pruned, decomposed or converted model, and pickling the module would run code
on load. So a run stores *how the architecture came about* instead: the input model spec, the ordered stages and
each stage's state dict. To load stage ``k`` we build the input model from its spec, load the copied input weights
(``00-input/model.pt``), and for each stage ``i ≤ k`` replay only its architecture change (``Stage.rebuild``, with
the same seed, on the model holding stage ``i-1``'s exact weights) and load stage ``i``'s state dict. Training
stages are not replayed: their weights are in the state dict. ``result.json`` records a structure fingerprint
(parameter names, shapes, dtypes and module types), checked after each replay, so a replay that does not reproduce
the architecture is a clear error rather than silently different weights. ``result.json`` is written last and
atomically: a stage counts as finished only when it exists and carries this run's id.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit._errors import CheckpointError, ConfigError, SlimkitError, UnsupportedModelError
from slimkit._io import copy_atomic, is_inside, read_json_object, refuse_links, write_text_atomic
from slimkit._runtimes import require_runtime
from slimkit.pipeline._recipe import Recipe, StageCall, parse_recipe, trusting_only
from slimkit.pipeline._stages import Exporter, Stage, StageContext, export_files, named_model

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
#: a stage's measurements that say how big the model is (a compression stage that changes none of them did nothing)
_SIZE_KEYS = ("params", "nonzero_params", "macs", "bytes")
RESULT_FILE = "result.json"
INPUT_LABEL = "00-input"
#: ``reporter(event, info)``: "stage_start", "stage_end", "replay", "run_end"; the CLI prints them with rich
Reporter = Callable[[str, dict[str, Any]], None]


@dataclass
class RunResult:
    out: Path
    stages: list[dict[str, Any]]
    model: nn.Module
    files: dict[str, str]


def structure_fingerprint(model: nn.Module) -> str:
    """Parameter/buffer names, shapes and dtypes plus module types: equal iff two models have the same layout."""
    parts = [f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)]
    parts += [f"{name}={_type_name(m)}" for name, m in model.named_modules()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _type_name(module: nn.Module) -> str:
    # torch.fx names each GraphModule's per-instance class after whatever it was built from; the layout is the same
    return "GraphModule" if isinstance(module, torch.fx.GraphModule) else type(module).__name__


def _next_exporter(stage: Stage, current: Exporter | None) -> Exporter | None:
    """How the models after ``stage`` are exported: its own way, else the earlier one, unless its model is a new
    one (a distilled float student after an int8 stage is exported as the float model it is)."""
    return stage.exporter() or (None if stage.replaces_model() else current)


#: the text fields of a stage's result; every other field but its notes is a number or null
_TEXT_FIELDS = frozenset({"run_id", "stage", "name", "split", "structure", "latency_status", "latency_runtime",
                          "latency_error", "onnx_error", "container_error"})


def _well_formed(result: dict[str, Any]) -> bool:
    """Whether a stage's saved result has the types its row is made of (a damaged one is treated as absent: the
    stage runs again, and a report is never drawn from a string where a number belongs)."""
    for key, value in result.items():
        if key == "notes":
            if not isinstance(value, dict):
                return False
        elif key in _TEXT_FIELDS:
            if value is not None and not isinstance(value, str):
                return False
        elif value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return False
    return True


def _write_json(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


class _Session:
    """The shared state of one run (or one reload of a run folder)."""

    def __init__(self, recipe: Recipe, out: Path, run_id: str, progress: bool, reporter: Reporter | None) -> None:
        from slimkit.data import create_data
        from slimkit.models import class_count_option, from_spec

        self.recipe, self.out, self.run_id, self.progress = recipe, out, run_id, progress
        self.reporter = reporter or (lambda event, info: None)
        d = recipe.schema.data
        self.data = create_data(d.name, batch_size=d.batch_size, augment=d.augment, seed=d.seed,
                                calibration_size=d.calibration_size)
        self.data.train = _subset(self.data.train, d.train_samples, shuffle=True, seed=d.seed)
        for split in ("valid", "test"):
            setattr(self.data, split, _subset(getattr(self.data, split), d.eval_samples))
        self.spec_options = class_count_option(recipe.schema.model.spec, self.data.num_classes)
        # an untrained input model (a recipe that starts with 'train') is initialised from the recipe's seed
        from slimkit.train import seed_everything

        seed_everything(recipe.schema.seed)
        self.model = named_model(from_spec(recipe.schema.model.spec, allow_code=recipe.allow_code,
                                           **self.spec_options).eval(), recipe.schema.model.spec, self.spec_options)
        self.example = self.data.example_input(1)
        self.exporter: Exporter | None = None
        self.input_model: nn.Module | None = None
        self.snapshots: dict[str, nn.Module] = {}

    def stage_dir(self, label: str) -> Path:
        return self.out / "stages" / label

    def context(self, call: StageCall | None, resume: bool = False) -> StageContext:
        label = call.label if call else INPUT_LABEL
        return StageContext(
            data=self.data, input_model=self.input_model or self.model, example_input=self.example,
            run_dir=self.out, stage_dir=self.stage_dir(label),
            seed=self.recipe.schema.seed + (call.index if call else 0),
            resume=resume, progress=self.progress, exporter=self.exporter, snapshots=self.snapshots,
            allow_code=self.recipe.allow_code, runtime=self.recipe.schema.evaluation.runtime,
        )

    def replay_context(self, call: StageCall, done: dict[str, Any]) -> StageContext:
        """The context a finished stage is rebuilt in: its saved notes included (what it chose when it ran, e.g.
        the int8 weight grid, which the replay must reuse rather than decide again on this machine)."""
        ctx = self.context(call)
        ctx.notes.update(done.get("notes") or {})
        return ctx

    def finished(self, label: str) -> dict[str, Any] | None:
        result = read_json_object(self.stage_dir(label) / RESULT_FILE)
        # a result naming another stage is not this one's: its "stage" becomes a path when it is reused
        ok = result is not None and result.get("run_id") == self.run_id and result.get("stage") == label
        ok = ok and _well_formed(result) and (self.stage_dir(label) / "model.pt").is_file()
        return result if ok else None

    def load_state(self, model: nn.Module, label: str, result: dict[str, Any]) -> None:
        from slimkit.train import load_checkpoint

        path = self.stage_dir(label) / "model.pt"
        try:
            model.load_state_dict(load_checkpoint(path), strict=True)
        except RuntimeError as error:
            raise CheckpointError(f"stage {label}: rebuilding the architecture did not reproduce the saved one "
                                  f"({str(error).splitlines()[0]}); rerun the recipe with --force") from None
        if structure_fingerprint(model) != result.get("structure"):
            raise CheckpointError(f"stage {label}: the rebuilt model's layout differs from the one saved in "
                                  f"{path.parent}: rerun the recipe with --force into the folder")

    # --- measuring --------------------------------------------------------------------------------------------

    def measure(self, model: nn.Module, label: str) -> dict[str, Any]:
        """The stage's row: profile, accuracy on the evaluation split, ONNX file and latency against the input's.
        The input's ONNX file is written only as the latency baseline (a recipe has at least one stage, whose file
        is the one deployed): exporting a language model takes tens of seconds. The input is not timed against
        itself: its ratio is 1 by definition, and each later stage's comparison carries its own A/A control (the
        self-comparison cost a whole comparison per run, ~3 s for LeNet-5 at batch 64, ~10 s for a small Llama)."""
        from slimkit.analysis import compare_latency, evaluate, profile
        from slimkit.export import ExportError, export_onnx

        ev = self.recipe.schema.evaluation
        folder = self.stage_dir(label)
        model.eval()
        prof = profile(model, self.example)
        _write_json(folder / "profile.json", prof.to_dict())
        loader = getattr(self.data, ev.split) or self.data.test
        scores = evaluate(model, loader)
        row: dict[str, Any] = {
            "params": prof.total.params, "nonzero_params": prof.total.nonzero_params, "macs": prof.total.macs,
            "bytes": prof.total.bytes, "accuracy": scores.accuracy, "loss": scores.loss, "split": ev.split,
            "samples": scores.samples, "latency_ratio": None, "onnx_bytes": None, "perplexity": scores.perplexity,
        }
        container = _container_bytes(model, folder / "model.slim")
        if isinstance(container, int):
            row.update(bytes=container, profile_bytes=prof.total.bytes)
        elif container is not None:
            row["container_error"] = container
        onnx_path = folder / "model.onnx"
        if label == INPUT_LABEL and not ev.latency:
            return row
        try:
            (self.exporter or export_onnx)(model, self.example, onnx_path)
            row["onnx_bytes"] = onnx_path.stat().st_size
        except ExportError as error:
            row["onnx_error"] = str(error)
            log.warning("stage %s: ONNX export failed, no latency measured: %s", label, error)
            return row
        if label == INPUT_LABEL:  # its ratio is 1 by definition (set by the caller), not timed
            return row
        baseline = self.stage_dir(INPUT_LABEL) / "model.onnx"
        if ev.latency:
            try:
                cmp = compare_latency(baseline, onnx_path, self.data.example_input(ev.latency_batch),
                                      backend=ev.runtime, threads=ev.threads, warmup=ev.warmup, repeats=ev.repeats)
            except UnsupportedModelError as error:  # the runtime cannot run this stage's file: no ratio
                row.update(latency_runtime=ev.runtime, latency_error=str(error))
                log.warning("stage %s: no latency measured: %s", label, error)
                return row
            row.update(latency_runtime=ev.runtime, latency_ratio=cmp.ratio, latency_p10=cmp.ratio_p10,
                       latency_p90=cmp.ratio_p90,
                       latency_aa_ratio=cmp.aa_ratio, latency_aa_p10=cmp.aa_p10, latency_aa_p90=cmp.aa_p90,
                       latency_status=cmp.status, latency_ms=cmp.candidate.median_ms,
                       baseline_latency_ms=cmp.baseline.median_ms, latency_batch=ev.latency_batch,
                       latency_threads=ev.threads)
        return row

    def reuse(self, previous: dict[str, Any], label: str) -> dict[str, Any]:
        """The previous stage's measurements, for a stage that did not change the model."""
        folder = self.stage_dir(label)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("model.onnx", "profile.json"):
            source = self.stage_dir(previous["stage"]) / name
            if source.is_file():
                copy_atomic(source, folder / name)
        skip = {"run_id", "stage", "name", "structure", "notes", "seconds"}
        return {k: v for k, v in previous.items() if k not in skip}

    def save_stage(self, model: nn.Module, label: str, name: str, row: dict[str, Any], extra: dict[str, Any]) -> dict:
        from slimkit.train import save_checkpoint

        folder = self.stage_dir(label)
        save_checkpoint(model.state_dict(), folder / "model.pt")
        result = {"run_id": self.run_id, "stage": label, "name": name, **row,
                  "structure": structure_fingerprint(model), "notes": extra}
        _write_json(folder / RESULT_FILE, result)  # written last: the stage is finished once this file exists
        return result


def _container_bytes(model: nn.Module, path: Path) -> int | str | None:
    """The size of the Huffman-coded container of a model with clustered layers (its honest bytes: the profile's
    figure is before Huffman coding), an error message if it cannot be written, None for other models."""
    from slimkit.share import clustered_layers, save_compressed

    if not clustered_layers(model):
        return None
    try:
        return save_compressed(model, path).file_bytes
    except SlimkitError as error:  # e.g. an architecture no registered model spec rebuilds
        log.warning("no compressed container for %s: %s", path.parent.name, error)
        return str(error)


def _subset(loader: Any, n: int | None, *, shuffle: bool = False, seed: int = 0) -> Any:
    """The first ``n`` samples of a tensor loader (the data section's ``train_samples`` / ``eval_samples``)."""
    from slimkit.data import TensorLoader

    if n is None or loader is None or not isinstance(loader, TensorLoader) or n >= len(loader.inputs):
        return loader
    return TensorLoader(loader.inputs[:n], loader.targets[:n], loader.batch_size, shuffle=shuffle,
                        augment=loader.augment, seed=seed)


def is_run_folder(out: Path) -> bool:
    """True when ``out`` holds a run slimkit started (its ``run.json`` with a run id and recipe fingerprint)."""
    previous = read_json_object(out / RUN_FILE) if out.is_dir() else None
    return isinstance(previous, dict) and "run_id" in previous and "fingerprint" in previous


def _check_export_targets(recipe: Recipe, out: Path, previous: dict[str, Any]) -> None:
    """An export stage writing into an earlier run's folder may replace a file only that run's recipe exported: any
    other file there is the user's (``--force`` starts the run over, it does not clear the folder)."""
    recorded = previous.get("recipe")
    ours = export_files(recorded.get("stages") if isinstance(recorded, dict) else None)
    for name in sorted(export_files(recipe.stages) - ours):
        if (out / name).exists() or (out / name).is_symlink():
            raise ConfigError(f"export file '{name}' exists in '{out}' and no earlier run there wrote it: it is "
                              "never replaced; give the export stage another file name, or move the file")


def _prepare_out(recipe: Recipe, out: Path, resume: bool, force: bool) -> tuple[str, bool]:
    """Check the folder; returns (run id, whether an earlier run is being resumed).

    Nothing the user owns is overwritten: a non-empty folder is accepted only if it holds a slimkit run (continued
    with ``resume``, started over with ``force``), and never when the recipe's input checkpoint lies inside it.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file: give a folder")
    for source in recipe.input_files():
        if is_inside(source, out):
            what = "input checkpoint" if source == recipe.checkpoint else "input file"
            raise ConfigError(f"the {what} '{source}' is inside the output folder '{out}': choose another --out so "
                              "that the run can never overwrite its input")
    non_empty = out.is_dir() and any(out.iterdir())
    if not non_empty:
        return uuid.uuid4().hex[:12], False
    if not is_run_folder(out):
        what = "--resume continues only a run slimkit started there" if resume else \
            "slimkit writes only into a new or empty folder, or one holding an earlier slimkit run"
        raise ConfigError(f"output folder '{out}' is not empty and holds no slimkit run ({RUN_FILE} is missing): "
                          f"{what}; choose a new folder")
    refuse_links(out)  # a slimkit run's folder: any link in it was planted
    previous = read_json_object(out / RUN_FILE)
    _check_export_targets(recipe, out, previous)
    if resume:
        if previous.get("fingerprint") != recipe.fingerprint():
            raise ConfigError(f"--resume: the recipe differs from the one that started the run in '{out}': use the "
                              "same recipe (and options), or start over with --force (or a new --out)")
        return str(previous["run_id"]), True
    if not force:
        raise ConfigError(f"output folder '{out}' holds an earlier run: pass --resume to continue it, --force to "
                          "start over in it, or choose a new folder")
    return uuid.uuid4().hex[:12], False


def run_recipe(recipe: Recipe, out: str | Path, *, resume: bool = False, force: bool = False,
               progress: bool = True, reporter: Reporter | None = None, report: bool = True) -> RunResult:
    """Run ``recipe`` into folder ``out``: every stage in order, evaluated and checkpointed after each.

    ``resume=True`` continues a run interrupted in ``out`` from its last finished stage and reaches the same
    weights and metrics (latency aside, which is measured anew). The input checkpoint is never written. Under
    ``torchrun`` every rank runs the stages (training is data-parallel) and rank 0 alone measures and writes. The
    recipe's ``torch_threads``, if set, is PyTorch's thread count for the whole run (restored afterwards).
    """
    from slimkit.train import torch_threads

    with torch_threads(recipe.schema.torch_threads):
        return _run_recipe(recipe, Path(out), resume, force, progress, reporter, report)


def _run_recipe(recipe: Recipe, out: Path, resume: bool, force: bool, progress: bool, reporter: Reporter | None,
                report: bool) -> RunResult:
    from slimkit import __version__
    from slimkit.train import broadcast_object, init_distributed, seed_everything

    main = init_distributed().is_main
    run_id, resuming = _prepare_out(recipe, out, resume, force) if main else ("", False)
    run_id, resuming = broadcast_object((run_id, resuming))  # type: ignore[misc]
    # the model fits the data, every stage's own checks: before the folder is touched
    session = _checked_session(recipe, out, run_id, progress and main, reporter if main else None)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    if main and not resuming:
        write_text_atomic(out / "recipe.yaml", recipe.run_folder_text())
        _write_json(out / RUN_FILE, {"run_id": run_id, "fingerprint": recipe.fingerprint(), "status": "running",
                                     "slimkit": __version__, "recipe": recipe.to_dict(), "source": recipe.source,
                                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    model = session.model
    input_result = session.finished(INPUT_LABEL)
    if input_result is not None:
        session.load_state(model, INPUT_LABEL, input_result)
    else:
        input_result = {"stage": INPUT_LABEL}
        if main:
            started = time.perf_counter()
            row = session.measure(model, INPUT_LABEL)
            row["seconds"] = time.perf_counter() - started
            if recipe.schema.evaluation.latency and "onnx_error" not in row:  # the input is the ratios' baseline
                row.update(latency_ratio=1.0, latency_p10=None, latency_p90=None, latency_status="ok",
                           latency_runtime=recipe.schema.evaluation.runtime)
            input_result = session.save_stage(model, INPUT_LABEL, "input", row,
                                              {"checkpoint": str(recipe.checkpoint)})
    session.input_model = _frozen_copy(model)
    session.snapshots[INPUT_LABEL] = session.input_model
    results = [input_result]
    resume_next = resuming
    for call in recipe.stages:
        stage = call.build()
        done = session.finished(call.label)
        seed_everything(recipe.schema.seed + call.index)
        if done is not None:
            session.reporter("replay", {"call": call, "result": done})
            model = stage.rebuild(model, session.replay_context(call, done))
            session.load_state(model, call.label, done)
            session.exporter = _next_exporter(stage, session.exporter)
            session.snapshots[call.label] = _frozen_copy(model)
            results.append(done)
            continue
        session.reporter("stage_start", {"call": call, "total": len(recipe.stages)})
        ctx = session.context(call, resume=resume_next)
        resume_next = False
        started = time.perf_counter()
        model = stage.run(model, ctx)
        session.exporter = _next_exporter(stage, session.exporter)
        seconds = time.perf_counter() - started
        result = {"stage": call.label}
        if main:
            unexported = results[-1].get("onnx_bytes") is None and "onnx_error" not in results[-1]  # the input's
            row = session.reuse(results[-1], call.label) if not (stage.changes_model or unexported) else \
                session.measure(model, call.label)
            row["seconds"] = seconds
            if stage.compresses and all(row.get(k) == results[-1].get(k) is not None for k in _SIZE_KEYS):
                log.warning("stage %s changed neither the parameters, the nonzero ones, the MACs nor the bytes: its "
                            "options selected nothing to compress (check layers, skip, ratios, round_to)", call.label)
                ctx.notes["unchanged"] = True
            result = session.save_stage(model, call.label, call.name, row, ctx.notes)
        session.snapshots[call.label] = _frozen_copy(model)
        results.append(result)
        session.reporter("stage_end", {"call": call, "result": result})
    files = _finish(session, model, results, report) if main else {}
    return RunResult(out=out, stages=results, model=model, files=files)


def check_recipe(recipe: Recipe) -> None:
    """Every check a run of ``recipe`` makes before it touches its folder, and nothing else: the model builds, the
    checkpoint loads into it, the model fits the data, and each stage's own preflight passes. Writes nothing but the
    dataset cache (a decoded dataset, a corpus's tokenizer), as any command that loads the data does."""
    _checked_session(recipe, Path("."), "", False, None)


def _checked_session(recipe: Recipe, out: Path, run_id: str, progress: bool, reporter: Reporter | None) -> _Session:
    from slimkit.train import load_weights_

    session = _Session(recipe, out, run_id, progress, reporter)
    if recipe.checkpoint is not None:
        load_weights_(session.model, recipe.checkpoint)
    _preflight(session)
    return session


def _preflight(session: _Session) -> None:
    """Checks that need the data and the input model but no training: the model runs on the data's inputs and
    gives one score per class, and each stage's own ``preflight`` (e.g. distillation layer names and shapes)."""
    from slimkit.models import check_fits

    recipe = session.recipe
    if recipe.schema.evaluation.latency:
        require_runtime(recipe.schema.evaluation.runtime, "evaluation.runtime")
    check_fits(session.model, session.example, label=recipe.schema.model.spec, data=recipe.schema.data.name,
               num_classes=session.data.num_classes, task=session.data.task)
    structural_before = layers_changed = False
    for call in recipe.stages:
        stage = call.build()
        ctx = session.context(call)
        ctx.model_is_input, ctx.layers_are_input = not structural_before, not layers_changed
        stage.preflight(session.model, ctx)
        structural_before = structural_before or stage.structural
        layers_changed = layers_changed or (stage.structural and not stage.keeps_layers)


def _frozen_copy(model: nn.Module) -> nn.Module:
    import copy

    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


def _finish(session: _Session, model: nn.Module, results: list[dict[str, Any]], report: bool) -> dict[str, str]:
    from slimkit.train import save_checkpoint

    out = session.out
    last = session.stage_dir(results[-1]["stage"])
    save_checkpoint(model.state_dict(), out / "model.pt")
    files = {"state_dict": str(out / "model.pt")}
    if (last / "model.onnx").is_file():
        copy_atomic(last / "model.onnx", out / "model.onnx")
        files["onnx"] = str(out / "model.onnx")
    elif (out / "model.onnx").is_file():  # an earlier run's (--force): not this model, whose export failed
        (out / "model.onnx").unlink()
    metrics = {"recipe": session.recipe.to_dict(), "title": session.recipe.title,
               "stages": [_public(r) for r in results], "final": _public(results[-1]), "files": files}
    _write_json(out / "metrics.json", metrics)
    if report:
        from slimkit.report import write_report

        profiles = {}
        for key, result in (("before", results[0]), ("after", results[-1])):
            data = read_json_object(session.stage_dir(result["stage"]) / "profile.json")
            if data is not None:
                profiles[key] = data
        files.update({k: str(v) for k, v in write_report(out, metrics, profiles=profiles).items()})
    run = read_json_object(out / RUN_FILE) or {}
    run.update(status="finished", finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    _write_json(out / RUN_FILE, run)
    session.reporter("run_end", {"results": results, "files": files})
    return files


def _public(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in {"run_id", "structure"}}


def load_run(run_dir: str | Path, stage: str | None = None, *,
             trusted_specs: tuple[str, ...] = ()) -> tuple[nn.Module, Any, Exporter | None]:
    """Load the model of a finished (or interrupted) run: the last finished stage, or ``stage`` (e.g. "02-prune").

    Returns ``(model, data bundle, exporter)``; the architecture is rebuilt by replaying structural stages (see the
    module docstring), so loading never unpickles code. A run whose recipe names a ``file.py:factory`` model is
    loaded only if the caller types that spec in ``trusted_specs``: the run folder's metadata never decides on its
    own to import code.
    """
    from slimkit.train import seed_everything

    out = Path(run_dir)
    run = read_json_object(out / RUN_FILE)
    if run is None or "recipe" not in run or "run_id" not in run:
        raise ConfigError(f"'{out}' is not a slimkit run folder ({RUN_FILE} missing or unreadable): give the --out "
                          "folder of 'slimkit compress'")
    recipe = parse_recipe(json.dumps(run["recipe"]), str(out / RUN_FILE), check_files=False, allow_code=False)
    recipe = trusting_only(recipe, trusted_specs, "If you wrote that file and trust it, confirm by typing the spec: "
                                                  "--trust-spec '{spec}'")
    session = _Session(recipe, out, str(run["run_id"]), False, None)
    model = session.model
    first = session.finished(INPUT_LABEL)
    if first is None:
        raise CheckpointError(f"'{out}' has no finished input stage: the run stopped before it began")
    session.load_state(model, INPUT_LABEL, first)
    session.input_model = _frozen_copy(model)
    session.snapshots[INPUT_LABEL] = session.input_model
    labels = [INPUT_LABEL]
    for call in recipe.stages if stage != INPUT_LABEL else ():
        done = session.finished(call.label)
        if done is None:
            if stage is None and run.get("status") == "finished":  # not an interrupted run: a damaged one
                raise CheckpointError(f"'{out}' is marked finished but stage {call.label} has no readable result "
                                      f"(its {RESULT_FILE} or model.pt is missing or damaged): rerun the recipe with "
                                      "--resume to measure it again, or give --stage to load an earlier stage")
            break
        seed_everything(recipe.schema.seed + call.index)
        built = call.build()
        model = built.rebuild(model, session.replay_context(call, done))
        session.load_state(model, call.label, done)
        session.exporter = _next_exporter(built, session.exporter)
        session.snapshots[call.label] = _frozen_copy(model)
        labels.append(call.label)
        if stage is not None and call.label == stage:
            break
    if stage is not None and labels[-1] != stage:
        raise ConfigError(f"stage '{stage}' is not a finished stage of '{out}': choose one of {', '.join(labels)}")
    return model.eval(), session.data, session.exporter
