"""The accuracy-aware search loop of ``auto`` and its run folder.

1. Measure the input model (validation accuracy, MACs, its fp32 ONNX file) and analyse it (``_analyse.py``).
2. For every deployment format, build the search problem and solve it under the budget (``_search.py``); the
   format whose solution costs the least predicted accuracy goes first.
3. Under a latency budget, first **probe** the plan: its architecture alone (the structural stages, no training —
   time does not depend on the weights' values), timed in ONNX Runtime against the input. A plan the probe finds over
   the budget (before any is measured within it) tightens the format's target as in 4 and is solved again, up to
   ``PROBES`` times per candidate, before any training is spent on it: what the tables cannot see (a mixed int8 /
   float model's layout changes around its float layers, for instance) is measured here. A plan well under the budget
   relaxes the target the same way (a milder plan costs less accuracy; never above a target a trained candidate's
   miss set); once a plan over the budget and one within it are known, the next is solved between the two (regula
   falsi on their probes), and the least sensitive plan measured within the budget is trained.
   Then carry the plan out (its recipe stages, recovery included) and **measure** it: the deployed file's bytes,
   MACs, ONNX Runtime latency against the input (A/A-controlled), accuracy on the validation split.
4. A budget the measurement misses tightens that format's target by measured/predicted (NetAdapt's empirical
   correction), never past the least the format reaches — except a mixed int8 plan's probed latency miss, which is
   charged to its float layers: their costs were timed one layer at a time and do not add up. An accuracy drop above
   ``max_drop`` (or an accuracy under ``min_accuracy``) backs off the plan's most sensitive choice (that option and
   every stronger one are forbidden; NNCF's accuracy control reverts layers the same way) and the format is solved
   again. After the first accuracy miss, the next candidate is the uniform plan of the missed plan's format, where
   one exists (two or more channel groups, a keep fraction within the target): every channel group tied to one keep
   fraction, solved like any plan (the tie level and the other choices together, least summed sensitivity), its
   groups free of the searched plans' back-offs; then each group may stay at the keep fraction before that one, as
   far as the target allows, the other choices held (the fractions step coarsely, and a whole level can land far
   under the budget). It is probed and judged against its own copy of the targets, and its accuracy miss backs
   nothing off: what it teaches about uniform plans does not steer the search. The summed per-group sensitivities
   miss how prunings interact, and uniform pruning is the baseline a user would otherwise run. Stop at the first
   candidate that meets the budget, ``max_drop`` and ``min_accuracy``, after ``max_candidates``, past ``time_limit``,
   or when every format is exhausted.
5. The result is the most accurate candidate that meets the budget as measured (on validation).

Decisions are made on the validation split (max_drop, min_accuracy, the back-off, the final choice); sensitivities
on the calibration slice of the training data; the test split is never read. Every candidate's plan, stages and
measurements stay in the run folder; ``resume`` reuses them, and the loop, being deterministic given them, makes
the same decisions again.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import shutil
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from slimkit._errors import ConfigError
from slimkit._io import read_json_object, refuse_links
from slimkit.auto._analyse import Analyser, Event, reachable_text
from slimkit.auto._apply import rebuild_stages, run_stages
from slimkit.auto._config import AutoConfig
from slimkit.auto._costs import Analysis, build_problem, layer_ms, plan_of, uniform_ties
from slimkit.auto._folder import RUN_FILE, digest, file_digests, state_digest, write_json
from slimkit.auto._formats import DeployFormat, create_format, format_knobs, searched_knobs
from slimkit.auto._measure import (
    LatencyMeter,
    deployed_latency,
    judged_ratio,
    latency_bound,
    measure_model,
    measured_intact,
    meets,
)
from slimkit.auto._plan import Plan
from slimkit.auto._search import Problem, reachable, solve
from slimkit.train import TrainingDiverged

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
#: latency probes (untrained architectures timed) allowed before each trained candidate
PROBES = 4
#: a probe measured below this share of the latency budget relaxes the target (a milder plan may still meet it)
NEAR = 0.9
#: a probe counts as within the latency budget at or below this share of it: the trained model is timed again, and
#: two measurements of one architecture differ by a few per cent (ResNet-20: a probe at 0.29 of a 0.3 budget, the
#: trained candidate at 0.307)
MARGIN = 0.97
#: a candidate whose recovery diverges is trained again at half the learning rates, down to this share of them
MIN_LR_SCALE = 0.25


def prepare_folder(out: Path, fingerprint: str, resume: bool, force: bool) -> tuple[str, bool]:
    """(run id, resuming). A folder is used only if it is new or empty, or holds an auto run (continued with
    ``resume`` when it was started with the same model, data and settings; restarted with ``force``)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file: give a folder")
    if not (out.is_dir() and any(out.iterdir())):
        return uuid.uuid4().hex[:12], False
    previous = read_json_object(out / RUN_FILE)
    if not isinstance(previous, dict) or "fingerprint" not in previous or "run_id" not in previous:
        raise ConfigError(f"output folder '{out}' is not empty and holds no auto run ({RUN_FILE} is missing): "
                          "choose a new folder")
    refuse_links(out)  # an auto run's folder: any link in it was planted
    if resume:
        if previous["fingerprint"] != fingerprint:
            raise ConfigError(f"--resume: the model, data or settings differ from those that started the run in "
                              f"'{out}': use the same ones, or start over with --force (or a new --out)")
        return str(previous["run_id"]), True
    if not force:
        raise ConfigError(f"output folder '{out}' holds an earlier auto run: pass --resume to continue it, --force "
                          "to start over in it, or choose a new folder")
    for child in ("analysis", "candidates", "probes"):
        shutil.rmtree(out / child, ignore_errors=True)
    return uuid.uuid4().hex[:12], False


class AutoRun:
    """One search: the input, the settings, the folder; :meth:`execute` returns the candidates and the choice."""

    def __init__(self, model: nn.Module, example: Any, data: Any, config: AutoConfig, out: Path, *,
                 meter: LatencyMeter | None, spec: str | None, emit: Event, progress: bool,
                 analysis_dir: Path | None = None) -> None:
        self.model, self.example, self.data, self.config, self.out = model.eval(), example, data, config, out
        self.meter, self.spec, self.emit, self.progress = meter, spec, emit, progress
        self.analysis_dir = analysis_dir or out / "analysis"
        self.budget = dict(config.budget.items())  # type: ignore[union-attr]
        #: per format, its channel groups' levels at each keep fraction (uniform plans); set once analysed
        self.ties: dict[str, dict[str, list[int]] | None] = {}
        self.started = time.perf_counter()

    @functools.cached_property
    def deploy_spec(self) -> str | None:
        """The model spec a container records to rebuild its model: the one given, else the registered model of
        the input's architecture (found on the input: a channel-pruned candidate matches none); None when neither
        (the container format says so, :meth:`DeployFormat.unavailable`)."""
        from slimkit._errors import SlimkitError
        from slimkit.share import resolve_spec

        if self.spec is not None or "container" not in self.config.formats:  # (the search builds every model)
            return self.spec
        try:
            return resolve_spec(self.model, self.spec)
        except SlimkitError:
            return self.spec

    def fingerprint(self) -> str:
        config = self.config.to_dict()
        if config["min_accuracy"] is None:  # unset: the fingerprint of runs made before the option existed
            del config["min_accuracy"]
        return digest({"config": config, "weights": state_digest(self.model.state_dict()),
                       "data": getattr(self.data, "name", None), "spec": self.spec})

    # --- the input model ----------------------------------------------------------------------------------------

    def baseline(self) -> dict[str, Any]:
        from slimkit.analysis import evaluate, profile
        from slimkit.export import export_onnx, self_contained_onnx

        path = self.out / "baseline.json"
        onnx = self.out / "baseline.onnx"
        cached = read_json_object(path)
        if isinstance(cached, dict) and cached.get("fingerprint") == self.fingerprint() and onnx.is_file() \
                and measured_intact(cached) and self_contained_onnx(onnx):  # a file slimkit wrote is whole
            return cached
        self.emit("analysis", {"what": "input model", "done": 0, "total": 1})
        prof = profile(self.model, self.example)
        export_onnx(self.model, self.example, onnx)
        scores = evaluate(self.model, self.data.valid)
        base = {"fingerprint": self.fingerprint(), "accuracy": scores.accuracy, "loss": scores.loss,
                "samples": scores.samples, "params": prof.total.params, "macs": prof.total.macs,
                "bytes": onnx.stat().st_size, "onnx_bytes": onnx.stat().st_size, "formats": {}}
        base["knobs"], base["knobs_off"] = {}, {}
        for name in self.config.formats:
            fmt = create_format(name)
            reason = fmt.unavailable(self.model, self.example, self.deploy_spec)
            base["formats"][name] = reason
            if reason is None:
                knobs = format_knobs(name, self.model, self.config.knobs)
                off = fmt.unusable_knobs(self.model, self.example, self.deploy_spec, knobs, tuple(self.config.skip))
                base["knobs"][name], base["knobs_off"][name] = sorted(knobs - set(off)), off
        write_json(path, base)
        return base

    # --- the loop -----------------------------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        base = self.baseline()
        formats = [f for f in self.config.formats if base["formats"].get(f) is None]
        for name, reason in base["formats"].items():
            if reason is not None:
                self.emit("note", {"text": f"format {name} is not available: {reason}"})
            for knob, why in base.get("knobs_off", {}).get(name, {}).items():
                self.emit("note", {"text": f"format {name} does not search {knob}: {why}"})
        below = [key for key, limit in self.budget.items() if limit < 1]
        for name in list(formats):  # e.g. the container under a latency budget: its analysis would be time lost
            lowers = create_format(name).lowers_with(searched_knobs(base, name, self.model, self.config.knobs))
            cannot = [key for key in below if key not in lowers]
            if cannot and len(formats) > 1:
                formats.remove(name)
                self.emit("note", {"text": f"format {name} is not searched: its files cannot lower "
                                           f"{' or '.join(cannot)}"})
        if not formats:
            raise ConfigError("no deployment format can take this model: " +
                              "; ".join(f"{k}: {v}" for k, v in base["formats"].items()))
        began = time.perf_counter()
        analysis = Analyser(self.model, self.example, self.data, self.config, self.analysis_dir, self.meter,
                            formats, self.deploy_spec, self.out / "baseline.onnx", base, self.emit).run()
        analysis_seconds = time.perf_counter() - began
        dims = list(self.budget)
        problems = {f: build_problem(f, analysis, set(searched_knobs(base, f, self.model, self.config.knobs)), dims)
                    for f in formats}
        targets = self._check_reachable(problems, dims, analysis)
        self.ties = {f: uniform_ties(p, analysis, self.config.keep_fractions) for f, p in problems.items()}
        exhausted: set[str] = set()
        candidates: list[dict[str, Any]] = []
        log_entries: list[dict[str, Any]] = []
        seen: set[str] = set()
        ceilings: dict[str, float] = {}
        stop = "max_candidates"
        uniform_tried = False
        for index in range(1, self.config.max_candidates + 1):
            if self._late():
                stop = "time_limit"
                break
            # after the first accuracy miss of a plan that removed channels, one candidate prunes every group at one
            # keep fraction (or, group by group, the fraction before it, as far as the budget allows): the summed
            # per-group sensitivities miss interactions (ResNet-20 at latency 0.3: the search's plan pruned the stem
            # conv 88 % and lost to uniform pruning on validation, 96.65 % vs 96.85 %); once it is trained, the
            # choice among candidates keeps auto at least as accurate as it on validation
            missed = next((c for c in candidates if not c["outcome"]["accuracy_ok"] and c["plan"]["prune"]), None)
            # in the missed plan's format only: under a size budget the search's container plan would otherwise
            # give its slot to an fp32 uniform plan pruned past any use (ResNet-20 at size 0.03: 88 %, 62 %)
            uniform = (not uniform_tried and missed is not None
                       and bool(self.ties.get(missed["plan"]["format"])))
            plan, cut = None, False
            trial = (targets, ceilings)  # the targets and latency ceilings this candidate is solved and judged by
            if uniform:
                uniform_tried = True
                # its own copy: what its probes and its measurement teach about uniform plans must not move the
                # searched plans' targets
                trial = ({f: dict(t) for f, t in targets.items()}, dict(ceilings))
                plan, problem, solution = self._next_plan(problems, trial[0], exhausted, analysis, seen, log_entries,
                                                          uniform=missed["plan"]["format"])
                if plan is not None:
                    self.emit("note", {"text": "trying uniform pruning (every channel group at one keep fraction, "
                                               "or at two adjacent ones) as a candidate"})
                    plan, problem, solution, cut = self._probed(index, plan, problem, solution, problems, *trial,
                                                                exhausted, analysis, seen, log_entries, uniform=True)
                if plan is None and not cut:
                    self.emit("note", {"text": "no uniform pruning plan meets the budget: the search goes on"})
            if plan is None and not cut:
                uniform, trial = False, (targets, ceilings)
                plan, problem, solution = self._next_plan(problems, targets, exhausted, analysis, seen, log_entries)
                if plan is not None:
                    plan, problem, solution, cut = self._probed(index, plan, problem, solution, problems, targets,
                                                                ceilings, exhausted, analysis, seen, log_entries)
            if plan is None:
                stop = "time_limit" if cut else "exhausted"
                break
            seen.add(plan.key())
            row = self._candidate(index, plan, analysis, base, uniform=uniform)
            row["picks"] = solution.picks
            candidates.append(row)
            outcome = self._judge(row, base)
            row["outcome"] = outcome
            write_json(self.out / "candidates" / f"{index:02d}" / RESULT_FILE, row)
            self.emit("candidate_end", {"index": index, "row": row})
            if outcome["accepted"]:
                stop = "accepted"
                break
            self._adapt(problem, solution, row, outcome, trial[0], log_entries, problems, trial[1], uniform=uniform)
        write_json(self.out / "search.json", {"stop": stop, "log": log_entries, "targets": targets,
                                              "exhausted": sorted(exhausted)})
        return {"base": base, "analysis": analysis, "candidates": candidates, "stop": stop,
                "analysis_seconds": analysis_seconds}

    def _late(self) -> bool:
        """Past ``time_limit``: no new candidate starts, and no new probe."""
        return self.config.time_limit is not None and time.perf_counter() - self.started > self.config.time_limit

    def _check_reachable(self, problems: dict[str, Problem], dims: list[str],
                         analysis: Analysis) -> dict[str, dict[str, float]]:
        """Each format's targets (the budget, in the prediction's units), or a ConfigError when no format's choices
        reach the budget. A latency budget the prediction puts out of reach is first tried on the plan with the least
        predicted latency, timed untrained: the prediction holds the ops between the layers (pooling, activations)
        constant, while they shrink with the channels (LeNet-5: a quarter of its time; predicted ≥ 0.33, its uniform
        pruning measured 0.23). A format whose plan measures within the budget is searched with the latency target
        scaled by predicted / measured."""
        reach = {f: reachable(p, dims) for f, p in problems.items()}
        targets = {f: dict(self.budget) for f in problems}
        feasible = [f for f, p in problems.items() if solve(p, self.budget) is not None]
        if not feasible and "latency" in dims and self.meter is not None:
            others = {key: limit for key, limit in self.budget.items() if key != "latency"}
            for fmt, problem in problems.items():
                if others and solve(problem, others) is None:  # out of reach on size or MACs: no timing helps
                    continue
                fastest = solve(problem, {}, minimise="latency")
                if fastest is None or not fastest.ratios.get("latency"):
                    continue
                plan = plan_of(problem, fastest.picks, analysis, fastest.ratios, fastest.objective)
                measured = self._probe(plan)
                if measured is None or measured > self.budget["latency"]:
                    continue
                targets[fmt]["latency"] = self.budget["latency"] * fastest.ratios["latency"] / measured
                if solve(problem, targets[fmt]) is not None:
                    feasible.append(fmt)
                    self.emit("note", {"text": f"{fmt}: predicted latency ≥ {fastest.ratios['latency']:.3f}, but its "
                                               f"fastest plan measured {measured:.3f}: searching with the prediction "
                                               "scaled to the measurement"})
        if not feasible:
            raise ConfigError(f"the budget {self.config.budget.text()} is beyond what the search space reaches on "  # type: ignore
                              f"this model (predicted, each limit alone: {reachable_text(reach, self.budget)}): "
                              "relax the budget, or allow more formats / knobs / stronger choices")
        write_json(self.out / "reachable.json", reach)
        return targets

    def _next_plan(self, problems: dict[str, Problem], targets: dict[str, dict[str, float]], exhausted: set[str],
                   analysis: Analysis, seen: set[str], log_entries: list[dict[str, Any]], *,
                   uniform: str | None = None) -> tuple:
        """(plan, problem, solution): the formats' solutions for their targets, the one costing the least predicted
        accuracy; a format with none new is exhausted. ``uniform`` (a format): that format's uniform plan instead
        (every channel group at one keep fraction, :func:`uniform_ties`, or at that one and the one before it,
        solved with no back-off of a channel group in force), or none; it exhausts nothing."""
        best = None
        for fmt, problem in problems.items():
            ties = self.ties.get(fmt) if fmt == uniform else None
            if (uniform is not None and not ties) or (uniform is None and fmt in exhausted):
                continue
            plan, solution, why = self._solved(fmt, problem, targets[fmt], analysis, log_entries, ties, seen)
            if plan is None or plan.key() in seen:
                if uniform is not None:
                    continue
                exhausted.add(fmt)
                if why == "infeasible":
                    self.emit("note", {"text": f"format {fmt}: no plan meets the budget within the allowed choices"})
                continue
            if best is None or solution.objective < best[2].objective - 1e-12:
                best = (plan, problem, solution)
        return best if best is not None else (None, None, None)

    def _solved(self, fmt: str, problem: Problem, target: dict[str, float], analysis: Analysis,
                log_entries: list[dict[str, Any]], ties: dict[str, list[int]] | None = None,
                known: set[str] = frozenset()) -> tuple[Plan | None, Any, str | None]:
        """The plan solved for ``target`` (logged), or None with why: no plan meets it ("infeasible"), or the plan
        is an int8 plan with every layer in float — an onnx plan, which the onnx format searches ("degenerate").
        With ``ties``, the uniform plan: its groups mixed between two adjacent tie levels, or at the one level when
        the mix is a plan in ``known`` (the searched plan that missed, its back-offs lifted here, can be one: the
        first uniform solve passes the plans seen)."""
        if ties:  # a uniform plan is its own baseline: the searched plans' back-offs of its groups do not bind it
            current = problem.state()
            problem.restore({k: [True] * len(problem.choices[k].allowed) for k in ties})  # as built
            try:
                solution = solve(problem, target, ties=ties, neighbours=True)
                if solution is not None and plan_of(problem, solution.picks, analysis, solution.ratios,
                                                    solution.objective).key() in known:
                    solution = solve(problem, target, ties=ties)
            finally:
                problem.restore(current)
        else:
            solution = solve(problem, target)
        log_entries.append({"format": fmt, "targets": dict(target), **({"uniform": True} if ties else {}),
                            "solution": None if solution is None else solution.to_dict()})
        if solution is None:
            return None, None, "infeasible"
        plan = plan_of(problem, solution.picks, analysis, solution.ratios, solution.objective)
        if fmt == "int8" and set(plan.float_layers) >= {n for n in analysis.layers if n not in analysis.skip}:
            return None, solution, "degenerate"
        return plan, solution, None

    def _probed(self, index: int, plan: Plan, problem: Problem, solution: Any, problems: dict[str, Problem],
                targets: dict[str, dict[str, float]], ceilings: dict[str, float], exhausted: set[str],
                analysis: Analysis, seen: set[str], log_entries: list[dict[str, Any]], *,
                uniform: bool = False) -> tuple:
        """(plan, problem, solution, cut): the plan to train, found by timing untrained architectures (up to
        ``PROBES``). Until a plan is measured within ``MARGIN`` of the latency budget, a plan measured over it
        tightens its format's target — a mixed int8 plan's miss is charged to its float layers instead
        (:meth:`_charge_float_layers`) — and the search solves again. A plan measured well under it (below ``NEAR``
        × the budget: the tables were pessimistic) gives way to a milder plan: compressing more than the budget needs
        costs accuracy for nothing. The milder plan is solved for the target relaxed by measured / predicted — never
        above ``ceilings[format]``, where a trained candidate of the format missed the budget — or, once a plan of
        the format has missed in this loop, for the target where the line through the two probes (the plan within,
        the missed plan with the least prediction) reaches the budget (regula falsi, :meth:`_between`); a milder
        plan that misses is followed by one between it and the plan within the same way (not after a charged miss,
        whose prediction was re-priced, nor on the last probe). The plan trained is the least sensitive one measured
        within ``MARGIN`` of the budget, at the target it was solved for; when none was, the last one solved (a probe
        that cannot be read — too noisy — lets it through). Past ``time_limit`` probing stops (``cut``): the plan
        measured within the budget is trained, or none. Where the first run stopped probing for time is kept in
        ``OUT/probes``, so a resumed run stops at the same probe.
        ``uniform``: the plans solved again are uniform ones too; None when a miss leaves no uniform plan (the caller
        then turns to the searched plans, with their own targets)."""
        if "latency" not in self.budget or self.meter is None:
            return plan, problem, solution, False
        limit = self.budget["latency"]
        goal = MARGIN * limit
        within: tuple | None = None
        within_at = (0.0, 0.0)  # (predicted, measured) latency of ``within``
        within_target = 0.0  # the latency target ``within`` was solved for
        # per format, (predicted, measured) of the plan probed over the budget here with the least predicted latency:
        # with a plan measured within, the bracket a milder plan is chosen in
        missed: dict[str, tuple[float, float]] = {}
        probed: set[str] = set()  # plans timed in this loop: solved again (a tie, say), they end it

        def settle() -> tuple:
            """``within``, trained, at the target it was solved for (a later relaxation is undone)."""
            targets[within[0].format]["latency"] = within_target  # type: ignore[index]
            return (*within, False)  # type: ignore[misc]

        def between() -> tuple | None:
            return self._between(within, within_at, within_target, missed[fmt], goal, targets, analysis,
                                 seen | probed, log_entries, uniform)

        cut_file = self.out / "probes" / f"cut-{index:02d}.json"
        cut = read_json_object(cut_file)
        cut_at = cut.get("probes") if isinstance(cut, dict) and type(cut.get("probes")) is int else None
        for count in range(PROBES):
            if not create_format(plan.format).probe_latency:
                return plan, problem, solution, False
            fmt = plan.format
            if count == cut_at or (cut_at is None and self._late()):
                write_json(cut_file, {"probes": count})
                return settle() if within is not None else (None, None, None, True)
            ratio = self._probe(plan)
            probed.add(plan.key())
            predicted = solution.ratios["latency"]
            log_entries.append({"probe": plan.key(), "format": fmt, "predicted": predicted, "measured": ratio})
            if ratio is None or not math.isfinite(ratio) or ratio <= 0:  # unreadable: what was measured stands
                return settle() if within is not None else (plan, problem, solution, False)
            last = count == PROBES - 1  # no probe left for another plan
            if ratio <= goal + 1e-12:
                if within is None or solution.objective <= within[2].objective:
                    within, within_at, within_target = (plan, problem, solution), (predicted, ratio), \
                        targets[fmt]["latency"]
                if ratio >= NEAR * limit or last:
                    break
                note = (f"probe: {plan.summary()} measures latency {ratio:.3f} (predicted {predicted:.3f}), well "
                        f"under {limit:g}: trying a milder plan")
                if fmt in missed:  # a milder plan missed already: the next one is chosen between the two
                    following = between()
                    if following is None:
                        break
                    self.emit("note", {"text": f"{note} below the one that missed "
                                               f"(target {targets[fmt]['latency']:.3f})"})
                    plan, solution = following
                    continue
                relaxed = min(predicted * goal / ratio * 0.99, ceilings.get(fmt, math.inf))
                following = None if relaxed <= targets[fmt]["latency"] else self._solved_anew(
                    fmt, problem, relaxed, targets, analysis, seen | probed, log_entries, uniform)
                if following is None:
                    break
                self.emit("note", {"text": f"{note} (target {relaxed:.3f})"})
                plan, solution = following
                continue
            note = (f"probe: {plan.summary()} measures latency {ratio:.3f} (predicted {predicted:.3f}) > "
                    f"{goal:.3f} ({MARGIN:g} of the budget)")
            charged = self._charge_float_layers(plan, solution, ratio, targets[fmt]["latency"], analysis, problems,
                                                log_entries)
            seen.add(plan.key())
            if charged:  # priced anew: its prediction no longer brackets anything
                self.emit("note", {"text": f"{note}: its float layers cost more together than alone; their "
                                           "costs are raised"})
            elif fmt not in missed or predicted < missed[fmt][0]:
                missed[fmt] = (predicted, ratio)
            if within is not None:
                # a milder plan missed: a plan between it and the one measured within the budget is probed (the
                # tables' error differs between the two: a pruned model's time is not linear in what they predict)
                following = None if charged or last else between()
                if following is None:
                    break  # the plan measured within is trained
                self.emit("note", {"text": f"{note}: trying a plan between it and {within[0].summary()} "
                                           f"(target {targets[fmt]['latency']:.3f})"})
                plan, solution = following
                continue
            if not charged:
                aim = _floored(problem, "latency", predicted * goal / ratio * 0.99)
                targets[fmt]["latency"] = min(targets[fmt]["latency"], aim)
                self.emit("note", {"text": f"{note}: solving again for {aim:.3f}"})
            plan, problem, solution = self._next_plan(problems, targets, exhausted, analysis, seen, log_entries,
                                                      uniform=fmt if uniform else None)
            if plan is None:
                return None, None, None, False
        return settle() if within is not None else (plan, problem, solution, False)

    def _between(self, within: tuple, within_at: tuple[float, float], within_target: float,
                 missed_at: tuple[float, float], goal: float, targets: dict[str, dict[str, float]],
                 analysis: Analysis, known: set[str], log_entries: list[dict[str, Any]],
                 uniform: bool) -> tuple | None:
        """(plan, solution) solved for the predicted latency where the line through two probes — ``within_at``
        (measured within the budget, solved for ``within_target``) and ``missed_at`` (over it), (predicted,
        measured) each — reaches 0.99 × ``goal`` (regula falsi). None when that target is not above
        ``within_target`` (it would give the plan within back) and below the missed plan's prediction, or gives a
        plan in ``known`` (probed or missed already); the target is then left as it was."""
        (low, low_measured), (high, high_measured) = within_at, missed_at
        fmt, problem = within[0].format, within[1]
        aim = low + (goal * 0.99 - low_measured) * (high - low) / (high_measured - low_measured)
        if not within_target < aim < high:
            return None
        return self._solved_anew(fmt, problem, aim, targets, analysis, known, log_entries, uniform)

    def _solved_anew(self, fmt: str, problem: Problem, aim: float, targets: dict[str, dict[str, float]],
                     analysis: Analysis, known: set[str], log_entries: list[dict[str, Any]],
                     uniform: bool) -> tuple | None:
        """(plan, solution) solved for the latency target ``aim`` (a uniform plan with ``uniform``), the format's
        target left at ``aim``; None when no plan meets it or the plan is in ``known``, the target then restored."""
        previous = targets[fmt]["latency"]
        targets[fmt]["latency"] = aim
        # no fallback to the whole level here (``known`` not passed): a probed mix solved again would give way to
        # the whole level, a stronger plan, where the probes ask for a milder one
        plan, solution, _ = self._solved(fmt, problem, targets[fmt], analysis, log_entries,
                                         self.ties.get(fmt) if uniform else None)
        if plan is None or plan.key() in known:
            targets[fmt]["latency"] = previous
            return None
        return plan, solution

    def _charge_float_layers(self, plan: Plan, solution: Any, measured: float, target: float, analysis: Analysis,
                             problems: dict[str, Problem], log_entries: list[dict[str, Any]]) -> bool:
        """A mixed int8 plan probed slower than predicted: the excess is charged to its float layers' costs in
        context (shared in proportion to their fp32 time) so that this plan is priced at what it measured — and at
        least just above ``target``, so the search cannot return it — and the int8 problem's costs are rebuilt in
        place (its back-offs stay). False when the plan is not a mixed int8 plan priced in context, or no excess is
        left: the caller then tightens the whole target.

        Why not tighten the target as for other misses: a float layer's cost in context is timed one layer at a
        time, and float layers do not add up — every float island adds its own quantize / dequantize pair and layout
        changes (ResNet-20: ten stage-2/3 layers each read ≈ 0 alone; floated together, predicted 0.494 of the
        input, measured 0.715). Scaling the whole target by measured / predicted then ruled out the all-int8 plan
        (predicted 0.476, measured 0.456) and sent the search to pruning plans that cost 2-3 points of accuracy.
        Charged, the search floats fewer of those layers, or none. The charge is conservative for a subset of them
        (part of it belongs to the company they kept); a subset's probe that measures well under its prediction
        relaxes the target as usual."""
        latency = analysis.latency
        if plan.format != "int8" or not plan.float_layers or not latency or "int8_layers" not in latency:
            return False
        extra = latency.get("int8_float_extra", {})
        layers = [n for n in plan.float_layers if n in extra and n in latency["layers"]]
        problem = problems["int8"]
        full = problem.full["latency"]
        now = problem.evaluate(solution.picks)["latency"]  # its price now: earlier charges may have raised it
        # clear of the target by more than the solver's feasibility tolerance
        excess = max(measured, target * 1.001) * full - now
        if not layers or not excess > 0:
            return False
        weights = {n: layer_ms(latency["layers"][n]) for n in layers}
        total = sum(weights.values())
        share = {n: (w / total if total > 0 else 1 / len(layers)) for n, w in weights.items()}

        def charged(added: dict[str, float]) -> dict[str, Any]:
            """The latency analysis with ``added`` milliseconds on those layers' costs in context."""
            return {**latency, "int8_float_extra": {**extra, **{n: extra[n] + ms for n, ms in added.items()}}}

        def rebuilt(latency_now: dict[str, Any]) -> Problem:
            return build_problem("int8", replace(analysis, latency=latency_now), set(self.config.knobs),
                                 list(self.budget))

        # a pruned float layer's extra is scaled by its width (its fp32 time at the plan's widths over its full
        # time): a trial charge shows how much of a charge reaches this plan, so the charge prices this very plan
        trial = {n: excess * share[n] for n in layers}
        reached = rebuilt(charged(trial)).evaluate(solution.picks)["latency"] - now
        if not reached > 0:
            return False
        added = {n: ms * excess / reached for n, ms in trial.items()}
        # this run's analysis only (the cached one, shared by runs of other budgets, stays as measured)
        analysis.latency = charged(added)
        fresh = rebuilt(analysis.latency)
        problem.terms, problem.constant = fresh.terms, fresh.constant
        log_entries.append({"charged": plan.key(), "format": "int8", "measured": measured,
                            "priced": problem.evaluate(solution.picks)["latency"] / full, "ms": added})
        return True

    def _probe(self, plan: Plan) -> float | None:
        """The latency ratio of the plan's architecture, untrained, as a budget judges it (:func:`latency_bound`;
        cached in ``OUT/probes`` by the plan's key)."""
        from slimkit.auto._apply import STRUCTURAL

        folder = self.out / "probes" / digest(plan.key())[:16]
        done = read_json_object(folder / RESULT_FILE)
        if isinstance(done, dict) and done.get("key") == plan.key() and (
                done.get("ratio") is None or type(done.get("ratio")) in (int, float)):  # else: measured again
            return done["ratio"]
        fmt = create_format(plan.format)
        stages = [s for s in fmt.stages(plan, self.config) if next(iter(s)) in STRUCTURAL]
        model = run_stages(self.model, stages, data=self.data, example=self.example, seed=self.config.seed,
                           folder=None)
        folder.mkdir(parents=True, exist_ok=True)
        written = fmt.write(model, self.example, folder / fmt.file_name, self.deploy_spec)
        budget = self.config.budget
        record = deployed_latency(model, written, example=self.example, fmt=fmt, folder=folder, baseline=self.model,
                                  baseline_onnx=self.out / "baseline.onnx", meter=self.meter,  # type: ignore[arg-type]
                                  batch=budget.batch, threads=budget.threads)  # type: ignore[union-attr]
        # judged as a trained candidate is (the interval's end): a probe within the budget by its median alone would
        # only send a candidate to training that then misses
        ratio = latency_bound(record)
        write_json(folder / RESULT_FILE, {"key": plan.key(), "ratio": ratio, "latency": record})
        return ratio

    def _candidate(self, index: int, plan: Plan, analysis: Analysis, base: dict[str, Any], *,
                   uniform: bool = False) -> dict[str, Any]:
        folder = self.out / "candidates" / f"{index:02d}"
        fmt = create_format(plan.format)
        planned = fmt.stages(plan, self.config)
        done = read_json_object(folder / RESULT_FILE)
        started = read_json_object(folder / "plan.json")
        # the same plan carried out by the same stages: a folder from an older slimkit whose format trained
        # otherwise (e.g. the centroid fine-tune's gradient) is trained again, so the recipe written reproduces it
        same_plan = isinstance(started, dict) and started.get("key") == plan.key() and _same_stages(started, planned)
        files = ("model.pt", fmt.file_name)
        if same_plan and isinstance(done, dict) and isinstance(done.get("plan"), dict) \
                and done["plan"].get("key") == plan.key() and measured_intact(done) \
                and done.get("files") == file_digests(folder, files):  # the files it measured, as they were
            self.emit("candidate_reused", {"index": index, "plan": plan})
            return self._row(done, index, plan, fmt, planned, uniform)
        if not same_plan:
            # another plan's stages (a run resumed with a search that now decides otherwise) must not be replayed
            for stale in (folder / "stages", folder / RESULT_FILE, folder / "model.pt"):
                if stale.is_dir():
                    shutil.rmtree(stale)
                elif stale.exists():
                    stale.unlink()
        # a run resumed after a divergence goes on at the learning rates it had lowered to
        scale = float(started.get("lr_scale", 1.0)) if same_plan else 1.0  # type: ignore[union-attr]
        began = time.perf_counter()
        total = len(planned)
        while True:
            stages = scaled_learning_rates(planned, scale)
            write_json(folder / "plan.json", {**plan.to_dict(), "key": plan.key(), "stages": stages,
                                              "lr_scale": scale})
            self.emit("candidate_start", {"index": index, "plan": plan, "stages": stages})
            try:
                model = run_stages(self.model, stages, data=self.data, example=self.example, seed=self.config.seed,
                                   folder=folder / "stages", progress=self.progress,
                                   on_stage=lambda i, name: self.emit("stage", {"index": index, "stage": i,
                                                                                "name": name, "total": total}))
                break
            except TrainingDiverged as error:
                # one plan's recovery diverging must not end the search: its training again at half the rates, as
                # the error says, and the stages of the diverged try are not replayed
                if scale <= MIN_LR_SCALE:
                    raise
                scale /= 2
                shutil.rmtree(folder / "stages", ignore_errors=True)
                self.emit("note", {"text": f"candidate {index:02d}: {error}; training it again at {scale:g}× the "
                                           "learning rates"})
        seconds = time.perf_counter() - began
        from slimkit.train import save_checkpoint

        save_checkpoint(model.state_dict(), folder / "model.pt")
        budget = self.config.budget
        row = measure_model(model, example=self.example, data=self.data, fmt=fmt, folder=folder, base=base,
                            baseline=self.model, baseline_onnx=self.out / "baseline.onnx", meter=self.meter,
                            batch=budget.batch, threads=budget.threads,  # type: ignore[union-attr]
                            spec=self.deploy_spec)
        row["files"] = file_digests(folder, files)
        return {**self._row({**row, "lr_scale": scale}, index, plan, fmt, planned, uniform), "seconds": seconds}

    def _row(self, done: dict[str, Any], index: int, plan: Plan, fmt: DeployFormat, planned: list[dict[str, Any]],
             uniform: bool) -> dict[str, Any]:
        """A candidate's row (measured now, or read back from its folder on a resume) with everything that names a
        file or a stage made here from the plan: a folder's file gives only measurements (a row's ``stages`` end up
        in the recipe that is run, its ``file`` in a path)."""
        scale = done.get("lr_scale", 1.0)
        scale = float(scale) if isinstance(scale, (int, float)) and MIN_LR_SCALE <= scale <= 1 else 1.0
        summary = plan.summary() + (f" (learning rates ×{scale:g}: the recovery diverged at higher ones)"
                                    if scale < 1 else "")
        return {**done, "format": fmt.name, "file": fmt.file_name, "index": index,
                "label": f"{index:02d} {plan.format}" + (" uniform" if uniform else ""),
                "plan": {**plan.to_dict(), "key": plan.key()}, "stages": scaled_learning_rates(planned, scale),
                "summary": summary, "lr_scale": scale}

    def _judge(self, row: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        met = meets(row, self.budget)
        drop = 100 * (base["accuracy"] - row["accuracy"])
        budget_ok = all(v is not False for v in met.values())
        verified = all(v is not None for v in met.values())
        drop_ok = drop <= self.config.max_drop + 1e-9
        floor = self.config.min_accuracy
        floor_ok = floor is None or 100 * row["accuracy"] >= floor - 1e-9
        accuracy_ok = drop_ok and floor_ok
        return {"budget": met, "drop": drop, "budget_met": budget_ok, "verified": verified, "drop_ok": drop_ok,
                "floor_ok": floor_ok, "accuracy_ok": accuracy_ok, "accepted": budget_ok and verified and accuracy_ok}

    def _adapt(self, problem: Problem, solution: Any, row: dict[str, Any], outcome: dict[str, Any],
               targets: dict[str, dict[str, float]], log_entries: list[dict[str, Any]],
               problems: dict[str, Problem], ceilings: dict[str, float], *, uniform: bool = False) -> None:
        """After a candidate: a budget it missed as measured tightens the target (for latency, also the ceiling no
        probe's relaxation may pass: a trained model's time outweighs an untrained probe's, and its miss after a
        probe within the budget is drift, not a layer's cost); a drop above ``max_drop`` (or an accuracy under
        ``min_accuracy``) backs off the plan's most sensitive choice — except after the uniform candidate: its
        choices are not the search's, and backing them off would forbid the searched plans options no searched plan
        chose."""
        entry: dict[str, Any] = {"candidate": row["index"], "format": problem.format}
        for key, ok in outcome["budget"].items():
            if ok is False:  # measured above the limit: aim lower by measured / predicted
                predicted = solution.ratios.get(key, row["ratios"][key])
                aim = predicted * self.budget[key] / judged_ratio(row, key) * 0.99
                # the MACs model is the same in every format; size and latency are each format's own
                for fmt in (targets if key == "macs" else [problem.format]):
                    targets[fmt][key] = min(targets[fmt][key], _floored(problems[fmt], key, aim))
                if key == "latency":
                    ceilings[problem.format] = min(ceilings.get(problem.format, math.inf),
                                                   targets[problem.format][key])
                entry.setdefault("tightened", {})[key] = aim
        if not outcome["accuracy_ok"] and uniform:
            entry["uniform"] = True  # no back-off: see above
        elif not outcome["accuracy_ok"]:
            picks = [(problem.choices[k].delta[i], k, i) for k, i in solution.picks.items()
                     if problem.choices[k].delta[i] > 0]
            if picks:
                delta, key, pick = max(picks)
                problem.back_off(key, pick)
                entry["backed_off"] = {"choice": key, "option": problem.choices[key].labels[pick], "delta": delta}
                self.emit("note", {"text": f"{accuracy_miss(outcome, row, self.config)}: backing off {key} "
                                           f"({problem.choices[key].labels[pick]})"})
        log_entries.append(entry)

    # --- the result ---------------------------------------------------------------------------------------------

    def choose(self, candidates: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
        """The most accurate candidate that meets the budget as measured, and the status of the choice."""
        def accuracy(row: dict[str, Any]) -> float:
            return row["accuracy"]

        full = [r for r in candidates if r["outcome"]["budget_met"] and r["outcome"]["verified"]]
        if full:
            best = max(full, key=accuracy)
            return best, "met" if best["outcome"]["accuracy_ok"] else accuracy_status(best["outcome"])
        unverified = [r for r in candidates if r["outcome"]["budget_met"]]
        if unverified:
            return max(unverified, key=accuracy), "latency unverified (too noisy)"
        return None, "budget not met"

    def model_of(self, row: dict[str, Any]) -> nn.Module:
        """The candidate's model: its architecture replayed and its saved weights loaded."""
        from slimkit.train import load_checkpoint

        folder = self.out / "candidates" / f"{row['index']:02d}"
        model = rebuild_stages(self.model, row["stages"], data=self.data, example=self.example, seed=self.config.seed)
        try:
            model.load_state_dict(load_checkpoint(folder / "model.pt"), strict=True)
        except RuntimeError:  # a replay whose shapes differ (e.g. a k-means that found fewer clusters): run it again
            model = run_stages(self.model, row["stages"], data=self.data, example=self.example,
                               seed=self.config.seed, folder=folder / "stages")
        return model.eval()


def accuracy_status(outcome: dict[str, Any]) -> str:
    """The status of a chosen candidate that met the budget but not the accuracy asked for: ``max_drop missed``,
    or ``min_accuracy missed`` when only the floor was missed."""
    return "max_drop missed" if not outcome["drop_ok"] else "min_accuracy missed"


def accuracy_miss(outcome: dict[str, Any], row: dict[str, Any], config: AutoConfig) -> str:
    """Why a candidate's accuracy was not accepted, in words."""
    if not outcome["drop_ok"]:
        return f"accuracy dropped {outcome['drop']:.2f} points > max_drop {config.max_drop:g}"
    return f"accuracy {100 * row['accuracy']:.2f}% < min_accuracy {config.min_accuracy:g}%"


def _same_stages(started: dict[str, Any], planned: list[dict[str, Any]]) -> bool:
    """Whether a candidate folder's ``plan.json`` was carried out by ``planned`` (at its lowered learning rates)."""
    scale = started.get("lr_scale", 1.0)
    if not isinstance(scale, (int, float)) or not MIN_LR_SCALE <= scale <= 1:
        return False
    return json.loads(json.dumps(scaled_learning_rates(planned, float(scale)))) == started.get("stages")


def scaled_learning_rates(stages: list[dict[str, Any]], scale: float) -> list[dict[str, Any]]:
    """``stages`` with every training stage's learning rate times ``scale``."""
    if scale == 1:
        return stages
    return [{name: {**params, "lr": float(f"{params['lr'] * scale:.6g}")} if "lr" in params else params
             for name, params in entry.items()} for entry in stages]


def _floored(problem: Problem, key: str, aim: float) -> float:
    """A tightened target, but never below the least ``key`` the format's allowed choices reach: a miss far larger
    than the prediction (a mixed int8 / float model's layout costs, which no per-layer table sees) would otherwise
    scale the target past every plan and end the format, where its most compressed plan may still meet the budget."""
    floor = reachable(problem, [key]).get(key, 0.0)
    return max(aim, floor * (1 + 1e-9)) if math.isfinite(floor) else aim


def copy_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()
