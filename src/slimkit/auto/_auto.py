"""``auto_compress(model, example_inputs, AutoConfig(budget="latency=0.4", max_drop=0.5), data=data)``: the mix of
channel pruning, low rank, int8 / mixed precision, sparsity and weight sharing that keeps the most accuracy within a
latency / size / MACs budget, found by a measured search (see ``_run.py`` for the loop and ``_search.py`` for the
integer program)."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit._errors import ConfigError, DataError, SlimkitError
from slimkit._inputs import input_tuple
from slimkit._io import copy_atomic, read_json_object
from slimkit.auto._config import KNOBS, AutoConfig
from slimkit.auto._folder import RUN_FILE, write_json
from slimkit.auto._formats import create_format, format_lowers
from slimkit.auto._measure import LatencyMeter, OrtLatency
from slimkit.auto._plan import Plan
from slimkit.auto._report import write_auto_report
from slimkit.auto._run import AutoRun, prepare_folder

log = logging.getLogger(__name__)

#: ``reporter(event, info)``: "analysis" (what, done, total), "candidate_start", "stage", "candidate_end",
#: "candidate_reused", "note" (text), "done"; the CLI draws them with rich
Reporter = Any


class BudgetNotMet(SlimkitError):
    """No candidate met the budget as measured; ``.result`` holds every candidate (the report is written)."""

    def __init__(self, message: str, result: AutoResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class AutoResult:
    """What ``auto_compress`` found: the chosen plan and its recipe stages, every candidate's measurements, the
    input model's, and the run folder's files.

    status: ``met`` (budget, max_drop and min_accuracy met, as measured on validation), ``max_drop missed`` (the
    budget is met but no candidate kept the accuracy: the most accurate one is returned; ``min_accuracy missed``
    when that one is within max_drop but under min_accuracy), ``latency unverified (too noisy)`` (the
    latency comparison's A/A control failed, so the budget could not be confirmed), ``budget not met``.
    """

    status: str
    plan: Plan | None
    stages: list[dict[str, Any]]
    chosen: dict[str, Any] | None
    candidates: list[dict[str, Any]]
    base: dict[str, Any]
    out: Path
    stop: str
    seconds: float
    recipe: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)
    #: wall seconds of the analysis (sensitivities and costs; small when its caches were filled by an earlier run)
    analysis_seconds: float = 0.0

    def recipe_text(self) -> str | None:
        """The recipe as YAML (None when the caller gave no model spec / data section for it)."""
        if self.recipe is None:
            return None
        import yaml

        note = ("# torch_threads: the PyTorch thread count auto trained at, which this recipe reproduces exactly "
                "(same CPU\n# instruction set); remove it to use every core, at the cost of differences in the last "
                "digits.\n") if "torch_threads" in self.recipe else ""
        return note + yaml.safe_dump(self.recipe, sort_keys=False, allow_unicode=True)


def auto_report(model: nn.Module) -> AutoResult:
    """The :class:`AutoResult` of a model returned by :func:`auto_compress`."""
    result = getattr(model, "slimkit_auto", None)
    if result is None:
        raise ConfigError("this model was not made by slimkit.auto.auto_compress: it has no auto report")
    return result


def _check_inputs(model: nn.Module, example: Any, config: Any, data: Any) -> None:
    if not isinstance(config, AutoConfig):
        raise ConfigError(f"config must be an AutoConfig, got {type(config).__name__}: e.g. "
                          "AutoConfig(budget='latency=0.5', max_drop=0.5)")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be an nn.Module, got {type(model).__name__}")
    for split in ("train", "valid", "calibration"):
        if getattr(data, split, None) is None:
            raise DataError(f"auto needs data with a '{split}' split (a slimkit DataBundle, e.g. "
                            "create_data('mnist')): the search decides on the validation split and calibrates on the "
                            "calibration split")
    from slimkit._select import check_names, weighted_layer_names
    check_names(weighted_layer_names(model), config.skip, kind="weighted")
    below = [key for key, limit in config.budget.items() if limit < 1]  # type: ignore[union-attr]
    if not any(all(key in format_lowers(name, model, config.knobs) for key in below) for name in config.formats):
        raise ConfigError(f"none of the formats {', '.join(config.formats)} can lower {' and '.join(below)}"
                          f"{' with the knobs ' + ', '.join(config.knobs) if len(config.knobs) < len(KNOBS) else ''}"
                          ": add a format or a knob that can (onnx and int8 lower every budget with the channels or "
                          "rank knob, int8 the latency and size by itself; the container the size, and with the "
                          "channels knob the MACs, except on Hugging Face models)")
    try:
        with torch.no_grad():
            model.eval()(*input_tuple(example))
    except Exception as error:  # any failure here means the example does not fit the model
        raise ConfigError(f"the model does not run on the example inputs ({type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else ''}): pass inputs of the model's shape, "
                          "batch 1") from None


def _recipe(base: dict[str, Any] | None, config: AutoConfig, stages: list[dict[str, Any]]) -> dict[str, Any] | None:
    if base is None:
        return None
    budget = config.budget
    evaluation = {"split": "valid", "latency": True, "latency_batch": budget.batch,  # type: ignore[union-attr]
                  "threads": budget.threads, **base.get("evaluation", {})}  # type: ignore[union-attr]
    # the thread count the candidates were trained at: CPU kernels sum in an order that depends on it, so the
    # recipe pins it to reproduce the chosen model's weights on another machine
    return {"version": 1, "name": f"auto {budget.text()}", "seed": config.seed,  # type: ignore[union-attr]
            "torch_threads": torch.get_num_threads(), "model": dict(base["model"]), "data": dict(base.get("data", {})),
            "evaluation": evaluation, "stages": stages}


def auto_compress(model: nn.Module, example_inputs: Any, config: AutoConfig, *, data: Any = None,
                  out: str | Path | None = None, resume: bool = False, force: bool = False,
                  latency: LatencyMeter | None = None, spec: str | None = None,
                  recipe: dict[str, Any] | None = None, reporter: Reporter | None = None,
                  progress: bool = False, analysis_dir: str | Path | None = None) -> nn.Module:
    """Search the mix of techniques that keeps the most validation accuracy within ``config.budget``, carry it out
    with recovery, verify it by measurement, and return the compressed model (the caller's model is untouched).

    Per-layer sensitivities of every knob on calibration data (measured loss increase, or HAWQ-V2's Hessian-trace
    estimate; Dong et al. 2020), per-layer costs from the profiler, the deployed formats and measured ONNX Runtime
    latency tables (NetAdapt, Yang et al. 2018; HALP, Shen et al. 2022), an integer program over every layer's
    choice under all budgets at once (HAWQ-V3, Yao et al. 2021), then recovery (KD, Hinton et al. 2015, or
    fine-tuning), measurement and NNCF-style accuracy-aware back-off; see :mod:`slimkit.auto`.

    ``data``: a DataBundle with ``train`` (recovery), ``valid`` (every decision) and ``calibration`` splits.
    ``out``: the run folder (resumable with ``resume=True``; ``force`` starts over in it); default: a temporary one.
    ``latency``: what times models (default :class:`OrtLatency`; tests inject a deterministic one).
    ``spec``: the registered model spec (``lenet5``), which the container records to rebuild the model.
    ``recipe``: the ``model`` and ``data`` sections (and optionally ``evaluation``) of the recipe to write: with it,
    ``OUT/recipe.yaml`` is an ordinary recipe ``slimkit compress`` runs to reproduce the result.
    ``reporter(event, info)``: progress events (see :data:`Reporter`).
    ``analysis_dir``: where the analysis caches live (default ``OUT/analysis``); runs of other budgets on the same
    model, data and settings share one, so the model is analysed once.

    :func:`auto_report` on the result gives the :class:`AutoResult`. Raises :class:`BudgetNotMet` (with the result
    and the report written) when no candidate met the budget as measured.
    """
    _check_inputs(model, example_inputs, config, data)
    emit = reporter or (lambda event, info: None)
    meter = latency if latency is not None else OrtLatency()
    keep = None
    if out is None:
        keep = tempfile.TemporaryDirectory(prefix="slimkit-auto-")
        out = keep.name
    folder = Path(out)
    run = AutoRun(model, example_inputs, data, config, folder, meter=meter, spec=spec, emit=emit, progress=progress,
                  analysis_dir=Path(analysis_dir) if analysis_dir is not None else None)
    fingerprint = run.fingerprint()
    run_id, resuming = prepare_folder(folder, fingerprint, resume, force)
    folder.mkdir(parents=True, exist_ok=True)
    from slimkit import __version__

    info = read_json_object(folder / RUN_FILE) if resuming else None
    info = info if isinstance(info, dict) else {}
    info.update(run_id=run_id, fingerprint=fingerprint, status="running", slimkit=__version__,
                config=config.to_dict(), spec=spec, data=getattr(data, "name", None),
                started=info.get("started", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
    write_json(folder / RUN_FILE, info)
    began = time.perf_counter()
    try:
        outcome = run.execute()
        chosen, status = run.choose(outcome["candidates"])
        plan = Plan.from_dict(chosen["plan"]) if chosen else None
        stages = chosen["stages"] if chosen else []
        result = AutoResult(status=status, plan=plan, stages=stages, chosen=chosen,
                            candidates=outcome["candidates"], base=outcome["base"], out=folder, stop=outcome["stop"],
                            seconds=time.perf_counter() - began, recipe=_recipe(recipe, config, stages),
                            analysis_seconds=outcome["analysis_seconds"])
        compressed = run.model_of(chosen) if chosen else None
        result.files = _write_outputs(folder, result, config, compressed)
        info.update(status=status, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    seconds=result.seconds + info.get("seconds", 0.0))
        write_json(folder / RUN_FILE, info)
        emit("done", {"result": result})
        if compressed is None:
            raise BudgetNotMet(f"no candidate met the budget {config.budget.text()} as measured "  # type: ignore
                               f"({len(result.candidates)} tried, search stopped: {result.stop}); see "
                               f"{folder / 'report.md'}: relax the budget, raise max_candidates, or allow more "
                               "formats / knobs", result)
        compressed.slimkit_auto = result
        return compressed
    finally:
        if keep is not None:
            keep.cleanup()


def _write_outputs(folder: Path, result: AutoResult, config: AutoConfig, model: nn.Module | None) -> dict[str, str]:
    files: dict[str, str] = {}
    write_json(folder / "candidates.json", {"base": result.base, "candidates": result.candidates,
                                            "status": result.status, "stop": result.stop})
    files["candidates"] = str(folder / "candidates.json")
    if model is not None and result.chosen is not None:
        from slimkit.train import save_checkpoint

        save_checkpoint(model.state_dict(), folder / "model.pt")
        files["state_dict"] = str(folder / "model.pt")
        # the file's name from its format, never from a row (a resumed run reads rows back from its folder)
        name = create_format(result.chosen["format"]).file_name
        copy_atomic(folder / "candidates" / f"{int(result.chosen['index']):02d}" / name, folder / name)
        files["deployed"] = str(folder / name)
    text = result.recipe_text()
    if text is not None:
        from slimkit._io import write_text_atomic

        write_text_atomic(folder / "recipe.yaml", text)
        files["recipe"] = str(folder / "recipe.yaml")
    search = read_json_object(folder / "search.json") or {}
    payload = {"base": result.base, "candidates": result.candidates, "chosen": result.chosen,
               "status": result.status, "stop": result.stop, "budget": config.budget.text(),  # type: ignore
               "max_drop": config.max_drop, "min_accuracy": config.min_accuracy, "search": search, "recipe_text": text}
    files.update({k: str(v) for k, v in write_auto_report(folder, payload, f"auto {config.budget.text()}").items()})  # type: ignore
    return files
