"""The search: per-layer choices that minimise the summed sensitivity under every budget at once, as a mixed-integer
linear program solved exactly by HiGHS (``scipy.optimize.milp``).

Why an integer program and not a Lagrangian greedy. The budgets are several at once (latency *and* size *and*
MACs); a greedy over one Lagrange multiplier handles one, and a layer's cost is not separable: a convolution's
latency depends on the widths of two channel groups (its input's and its output's) and its own precision or rank,
read from a measured table that steps where the kernels pad. HAWQ-V3 (Yao et al. 2021) solves bit allocation as an
ILP for the same reasons; here the coupling is linearised exactly. With x_{g,i} ∈ {0, 1} choosing option i of
choice g (a group's width, a layer's precision / rank / sparsity / bits), every cost term that depends on several
choices gets continuous variables z ≥ 0 over the product of their options with one marginal constraint per factor,

    Σ_{idx : idx_f = i} z_idx = x_{f,i}      for every factor f of the term and option i,

which with one-hot x forces z to the indicator of the chosen combination (a transportation polytope with 0/1
margins has one point), so the term's cost Σ c_idx z_idx is its exact table value. The models here have tens of
choices with ≤ 10 options: the programs have a few thousand variables and HiGHS proves optimality in well under a
second.

Every choice's options are ordered from the mildest to the strongest, with a strength per knob; the objective adds
1e-9 per step of strength, so among choices of equal measured cost the search keeps the milder one. Back-off
(:meth:`Problem.back_off`) forbids a choice's chosen option and every option at least as strong in every knob, so
the next solution is strictly milder there and compresses elsewhere to stay within the budget.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: the objective's tie-break per step of strength (below any measured sensitivity difference that matters)
TIE_BREAK = 1e-9


@dataclass
class Choice:
    """One decision: its options (JSON labels, mildest first), their cost to accuracy (``delta``), their strength
    per knob (a tuple of steps; option j is at least as strong as i when every step is ≥), and which are allowed."""

    key: str
    labels: list[Any]
    delta: list[float]
    strength: list[tuple[int, ...]]
    allowed: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.allowed:
            self.allowed = [True] * len(self.labels)


@dataclass
class Term:
    """A cost that depends jointly on ``factors`` (choice keys): ``cost[dim]`` has one axis per factor."""

    factors: list[str]
    cost: dict[str, np.ndarray]
    name: str = ""


@dataclass
class Solution:
    """The chosen option index per choice, the predicted value of every dimension (absolute and as a ratio of the
    input model's), and the objective (summed sensitivity of the choices)."""

    picks: dict[str, int]
    predicted: dict[str, float]
    ratios: dict[str, float]
    objective: float
    status: str = "optimal"

    def to_dict(self) -> dict[str, Any]:
        return {"picks": self.picks, "predicted": self.predicted, "ratios": self.ratios, "objective": self.objective,
                "status": self.status}


@dataclass
class Problem:
    """The search space of one deployment format: choices, cost terms, a constant and the input model's value per
    dimension (``ratio = (Σ terms + constant) / full``)."""

    format: str
    choices: dict[str, Choice]
    terms: list[Term]
    constant: dict[str, float]
    full: dict[str, float]

    @property
    def dims(self) -> list[str]:
        return list(self.full)

    def evaluate(self, picks: dict[str, int]) -> dict[str, float]:
        """The predicted absolute value of every dimension for ``picks``."""
        out = dict(self.constant)
        for term in self.terms:
            idx = tuple(picks[f] for f in term.factors)
            for dim, table in term.cost.items():
                out[dim] = out.get(dim, 0.0) + float(table[idx])
        return out

    def objective_of(self, picks: dict[str, int]) -> float:
        return float(sum(self.choices[k].delta[i] for k, i in picks.items()))

    def solution(self, picks: dict[str, int], status: str = "optimal") -> Solution:
        predicted = self.evaluate(picks)
        ratios = {d: predicted[d] / self.full[d] for d in self.full if self.full[d] > 0}
        return Solution(picks, predicted, ratios, self.objective_of(picks), status)

    def back_off(self, key: str, pick: int) -> None:
        """Forbid option ``pick`` of choice ``key`` and every option at least as strong in every knob."""
        choice = self.choices[key]
        chosen = choice.strength[pick]
        for i, s in enumerate(choice.strength):
            if all(a >= b for a, b in zip(s, chosen)):
                choice.allowed[i] = False

    def mildest(self) -> dict[str, int]:
        """Every choice at its mildest allowed option."""
        return {k: c.allowed.index(True) for k, c in self.choices.items()}

    def state(self) -> dict[str, list[bool]]:
        return {k: list(c.allowed) for k, c in self.choices.items()}

    def restore(self, state: dict[str, list[bool]]) -> None:
        for k, allowed in state.items():
            if k in self.choices and len(allowed) == len(self.choices[k].allowed):
                self.choices[k].allowed = list(allowed)


def _layout(problem: Problem) -> tuple[dict[tuple[str, int], int], list[tuple[Term, list[tuple[int, ...]], int]], int]:
    """Variable indices: one binary per allowed option of every choice, then one continuous per allowed
    combination of every term with two or more factors."""
    index: dict[tuple[str, int], int] = {}
    for key, choice in problem.choices.items():
        for i, ok in enumerate(choice.allowed):
            if ok:
                index[(key, i)] = len(index)
    joint = []
    n = len(index)
    for term in problem.terms:
        if len(term.factors) < 2:
            continue
        combos = [idx for idx in itertools.product(*[range(len(problem.choices[f].labels)) for f in term.factors])
                  if all(problem.choices[f].allowed[i] for f, i in zip(term.factors, idx))]
        joint.append((term, combos, n))
        n += len(combos)
    return index, joint, n


#: the key of the one choice that stands for every tied choice in :func:`tied_problem`
TIED = "tied"


def tied_problem(problem: Problem, ties: dict[str, list[int]]) -> Problem:
    """``problem`` with the choices in ``ties`` moving together: they are replaced by one choice, :data:`TIED`,
    whose option j is option ``ties[key][j]`` of every tied choice ``key`` — allowed when all of those are, costing
    their summed sensitivity. Every term is re-indexed over the remaining factors (a term over two tied choices
    keeps only the combinations where both move together)."""
    lengths = {len(levels) for levels in ties.values()}
    if len(lengths) != 1:
        raise ValueError("every tied choice needs one option per tie level")
    count = lengths.pop()
    choices = {k: c for k, c in problem.choices.items() if k not in ties}
    choices[TIED] = Choice(TIED, list(range(count)),
                           [float(sum(problem.choices[k].delta[ties[k][j]] for k in ties)) for j in range(count)],
                           [(j,) for j in range(count)],
                           [all(problem.choices[k].allowed[ties[k][j]] for k in ties) for j in range(count)])
    terms = []
    for term in problem.terms:
        if not any(f in ties for f in term.factors):
            terms.append(term)
            continue
        factors: list[str] = []
        for f in term.factors:
            key = TIED if f in ties else f
            if key not in factors:
                factors.append(key)
        shape = [len(choices[f].labels) for f in factors]
        # each entry of the tied table and the entry of the original table it reads
        sources = {}
        for idx in np.ndindex(*shape):
            pick = dict(zip(factors, idx))
            sources[idx] = tuple(ties[f][pick[TIED]] if f in ties else pick[f] for f in term.factors)
        cost = {}
        for dim, table in term.cost.items():
            out = np.empty(shape)
            for idx, source in sources.items():
                out[idx] = table[source]
            cost[dim] = out
        terms.append(Term(factors, cost, term.name))
    return Problem(problem.format, choices, terms, dict(problem.constant), dict(problem.full))


def solve(problem: Problem, limits: dict[str, float], *, time_limit: float = 60.0,
          minimise: str | None = None, ties: dict[str, list[int]] | None = None,
          neighbours: bool = False) -> Solution | None:
    """The allowed picks with the least summed sensitivity whose predicted ratios are all ≤ ``limits`` (None when
    no such picks exist). ``minimise="latency"`` (etc.) instead minimises that dimension with no limits: the
    smallest ratio the search space reaches. With ``ties`` (choice → its option at each tie level), those choices
    move together (:func:`tied_problem`: e.g. every channel group at one keep fraction — uniform pruning); the
    picks returned are the untied problem's. ``neighbours`` (with ties and limits) then lets each tied choice take,
    on its own, its option one tie level milder than the level found, if there is one (:func:`between_levels`): a
    tie level before the first would be the untied choices' mildest options, which the untied search covers."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_array

    if ties:
        reduced = solve(tied_problem(problem, ties), limits, time_limit=time_limit, minimise=minimise)
        if reduced is None:
            return None
        level = reduced.picks.pop(TIED)
        picks = {**reduced.picks, **{k: levels[level] for k, levels in ties.items()}}
        tied = problem.solution({k: picks[k] for k in problem.choices}, reduced.status)
        if not neighbours or minimise is not None or level == 0:
            return tied
        return between_levels(problem, limits, ties, level, tied, time_limit=time_limit)
    if any(not any(c.allowed) for c in problem.choices.values()):
        return None
    if not problem.choices:  # no knob applies to any layer: the one plan is the model as it is
        return _within(problem.solution({}, "optimal"), limits, minimise)
    index, joint, n = _layout(problem)
    objective = np.zeros(n)
    budget_rows: dict[str, dict[int, float]] = {d: {} for d in problem.full}
    rows, cols, vals, lower, upper = [], [], [], [], []
    row = 0

    def add(target: dict[int, float], var: int, value: float) -> None:
        target[var] = target.get(var, 0.0) + value

    for key, choice in problem.choices.items():  # exactly one option per choice
        for i, ok in enumerate(choice.allowed):
            if ok:
                rows.append(row), cols.append(index[(key, i)]), vals.append(1.0)
                if minimise is None:
                    objective[index[(key, i)]] = choice.delta[i] + TIE_BREAK * sum(choice.strength[i])
        lower.append(1.0), upper.append(1.0)
        row += 1
    constant = {d: problem.constant.get(d, 0.0) for d in problem.full}
    for term in problem.terms:
        if not term.factors:
            for d, table in term.cost.items():
                constant[d] = constant.get(d, 0.0) + float(table)
        elif len(term.factors) == 1:
            f = term.factors[0]
            for d, table in term.cost.items():
                if d not in budget_rows:
                    continue
                for i, ok in enumerate(problem.choices[f].allowed):
                    if ok:
                        add(budget_rows[d], index[(f, i)], float(table[i]))
    for term, combos, start in joint:  # marginals tie each term's joint variables to its factors' choices
        for k, f in enumerate(term.factors):
            for i, ok in enumerate(problem.choices[f].allowed):
                if not ok:
                    continue
                for j, idx in enumerate(combos):
                    if idx[k] == i:
                        rows.append(row), cols.append(start + j), vals.append(1.0)
                rows.append(row), cols.append(index[(f, i)]), vals.append(-1.0)
                lower.append(0.0), upper.append(0.0)
                row += 1
        for d, table in term.cost.items():
            if d in budget_rows:
                for j, idx in enumerate(combos):
                    add(budget_rows[d], start + j, float(table[idx]))
    if minimise is not None:
        for var, value in budget_rows[minimise].items():
            objective[var] = value / problem.full[minimise]
    else:
        for d, limit in limits.items():
            if d not in budget_rows or not math.isfinite(limit):
                continue
            for var, value in budget_rows[d].items():
                rows.append(row), cols.append(var), vals.append(value)
            lower.append(-np.inf), upper.append(limit * problem.full[d] - constant[d])
            row += 1
    matrix = coo_array((vals, (rows, cols)), shape=(row, n)).tocsr()
    integrality = np.zeros(n)
    integrality[:len(index)] = 1
    result = milp(objective, integrality=integrality, bounds=Bounds(0, 1),
                  constraints=LinearConstraint(matrix, lower, upper),
                  options={"time_limit": time_limit, "disp": False, "presolve": True})
    if result.x is None:
        return None
    picks = {}
    for key, choice in problem.choices.items():
        values = [(result.x[index[(key, i)]], i) for i, ok in enumerate(choice.allowed) if ok]
        picks[key] = max(values)[1]
    status = "optimal" if result.status == 0 else "time limit (best found)"
    return _within(problem.solution(picks, status), limits, minimise)


def _within(solution: Solution, limits: dict[str, float], minimise: str | None) -> Solution | None:
    """``solution``, or None when it misses one of ``limits`` (a minimisation has none to meet)."""
    if minimise is None:
        for d, limit in limits.items():  # the rounded picks must still meet every limit
            if d in solution.ratios and solution.ratios[d] > limit * (1 + 1e-9) + 1e-12:
                log.warning("search: the solution misses %s (%.4f > %.4f)", d, solution.ratios[d], limit)
                return None
    return solution


def between_levels(problem: Problem, limits: dict[str, float], ties: dict[str, list[int]], level: int,
                   tied: Solution, *, time_limit: float = 60.0) -> Solution:
    """The least sensitive picks within ``limits`` where each tied choice sits at tie level ``level`` (> 0) or, on
    its own, at the level before it, every other choice held at its pick in ``tied`` (every tied choice at
    ``level``, within the limits); ``tied`` when the mixed solve does worse. Tie levels step coarsely (uniform
    pruning's keep fractions by eighths: ResNet-20 at a latency budget of 0.3 measured 0.31 at one level and 0.18
    at the next), so the whole-level plan can land far under the budget; the mix comes as close to it as one
    level's step per choice allows. Which choices stay milder is the one thing the summed sensitivities decide, one
    level apart. The other choices are held: with them free, the budget the milder widths left over bought low
    rank instead (ResNet-20 at latency 0.3: eight layers factorised to a quarter of their parameters, 0.9 points of
    validation accuracy below the whole level)."""
    state = problem.state()
    try:
        for key, choice in problem.choices.items():
            keep = {ties[key][level], ties[key][level - 1]} if key in ties else {tied.picks[key]}
            choice.allowed = [ok and i in keep for i, ok in enumerate(choice.allowed)]
        mixed = solve(problem, limits, time_limit=time_limit)
    finally:
        problem.restore(state)
    # the whole-level picks are among the mixed ones: the mix does worse only by the solver's tolerances (its
    # time limit, its MIP gap, the strength tie-break)
    return mixed if mixed is not None and mixed.objective <= tied.objective + 1e-9 else tied


def reachable(problem: Problem, dims: Sequence[str], *, time_limit: float = 60.0) -> dict[str, float]:
    """The smallest ratio of each dimension the allowed choices reach (each minimised alone)."""
    out = {}
    for d in dims:
        if d in problem.full:
            best = solve(problem, {}, time_limit=time_limit, minimise=d)
            out[d] = math.inf if best is None else best.ratios[d]
    return out
