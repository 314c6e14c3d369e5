import itertools

import numpy as np
import pytest

from slimkit.auto import Choice, Problem, Term, solve
from slimkit.auto._search import reachable


def _random_problem(rng: np.random.Generator, group_options: int | None = None) -> Problem:
    """Two channel groups (widths) and three layers with their own options; each layer's cost depends on the width
    of the group before it, the group after it and its own option (as a conv's latency does)."""
    choices = {}
    for g in ("g1", "g2"):
        n = group_options or int(rng.integers(2, 5))
        choices[g] = Choice(g, list(range(n)), sorted(rng.random(n) * rng.random()), [(i,) for i in range(n)])
    for layer in ("a", "b", "c"):
        n = int(rng.integers(1, 4))
        choices[layer] = Choice(layer, list(range(n)), list(rng.random(n)), [(i,) for i in range(n)])
    layout = {"a": [None, "g1"], "b": ["g1", "g2"], "c": ["g2", None]}
    terms = []
    for layer, sides in layout.items():
        factors = [s for s in sides if s is not None] + ([layer] if len(choices[layer].labels) > 1 else [])
        shape = [len(choices[f].labels) for f in factors]
        terms.append(Term(factors, {"latency": rng.random(shape) * 10, "size": rng.random(shape) * 5}, layer))
    return Problem("test", choices, terms, {"latency": 1.0, "size": 2.0}, {"latency": 40.0, "size": 20.0})


def _brute_force(problem: Problem, limits: dict[str, float]) -> float | None:
    keys = list(problem.choices)
    best = None
    for combo in itertools.product(*[[i for i, ok in enumerate(problem.choices[k].allowed) if ok] for k in keys]):
        picks = dict(zip(keys, combo))
        values = problem.evaluate(picks)
        if all(values[d] / problem.full[d] <= limit + 1e-12 for d, limit in limits.items()):
            objective = problem.objective_of(picks)
            best = objective if best is None else min(best, objective)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_the_program_finds_the_exact_optimum_of_the_joint_costs(seed):
    rng = np.random.default_rng(seed)
    problem = _random_problem(rng)
    limits = {"latency": float(rng.uniform(0.3, 0.9)), "size": float(rng.uniform(0.3, 0.9))}
    expected = _brute_force(problem, limits)
    got = solve(problem, limits)
    if expected is None:
        assert got is None
        return
    assert got is not None
    assert got.objective == pytest.approx(expected, abs=1e-6)
    values = problem.evaluate(got.picks)  # the reported predictions are the tables' values at the picks
    for d, limit in limits.items():
        assert got.ratios[d] == pytest.approx(values[d] / problem.full[d]) and got.ratios[d] <= limit + 1e-9


def test_reachable_is_the_smallest_ratio_of_each_dimension_alone():
    problem = _random_problem(np.random.default_rng(3))
    keys = list(problem.choices)
    smallest = min(problem.evaluate(dict(zip(keys, combo)))["latency"] for combo in
                   itertools.product(*[range(len(problem.choices[k].labels)) for k in keys])) / 40.0
    assert reachable(problem, ["latency"])["latency"] == pytest.approx(smallest)
    assert solve(problem, {"latency": smallest * 0.99}) is None
    assert solve(problem, {"latency": smallest * 1.0001}) is not None


def test_among_equal_costs_the_milder_option_wins():
    # every option costs the same accuracy (0): the tie-break keeps each choice at its mildest feasible option
    choices = {"g": Choice("g", [8, 6, 4, 2], [0.0] * 4, [(i,) for i in range(4)])}
    term = Term(["g"], {"macs": np.array([8.0, 6.0, 4.0, 2.0])})
    problem = Problem("test", choices, [term], {"macs": 0.0}, {"macs": 8.0})
    assert solve(problem, {"macs": 0.8}).picks == {"g": 1}
    assert solve(problem, {"macs": 0.5}).picks == {"g": 2}


def test_back_off_forbids_the_choice_and_everything_at_least_as_strong_in_every_knob():
    # options of a container layer: (sparsity step, bits step), mildest first
    strength = [(s, b) for s in range(3) for b in range(3)]
    choice = Choice("layer:fc", [{"s": s, "b": b} for s, b in strength], [0.1 * (s + b) for s, b in strength],
                    strength)
    problem = Problem("test", {"layer:fc": choice}, [], {}, {"size": 1.0})
    problem.back_off("layer:fc", strength.index((1, 1)))
    forbidden = {s for s, ok in zip(strength, choice.allowed) if not ok}
    assert forbidden == {(1, 1), (1, 2), (2, 1), (2, 2)}
    # stronger in one knob and milder in the other stays allowed
    assert choice.allowed[strength.index((2, 0))] and choice.allowed[strength.index((0, 2))]


def test_tied_choices_move_together_and_the_tied_optimum_is_exact():
    # g1 and g2 tied level by level, as uniform pruning ties every group to one keep fraction (g2 skips its option 1
    # and repeats its last, as a small group's rounded widths do); term "b" depends on both, so the tied problem
    # keeps only its diagonal combinations; a back-off of g1's strongest option forbids that tie level
    ties = {"g1": [0, 1, 2, 3, 3], "g2": [0, 0, 2, 1, 3]}
    others = ("a", "b", "c")
    levels_found = set()
    for seed in range(16):
        rng = np.random.default_rng(100 + seed)
        problem = _random_problem(rng, group_options=4)
        problem.choices["g2"].allowed[3] = False  # forbids tie level 4 only (g2's option 3)
        # a term on no tied choice and one on none at all pass through unchanged
        problem.terms += [Term(["a"], {"latency": np.arange(len(problem.choices["a"].labels), dtype=float)}, "a2"),
                          Term([], {"size": np.array(0.5)}, "fixed")]
        feasible = {}
        for level in range(4):
            for combo in itertools.product(*[range(len(problem.choices[k].labels)) for k in others]):
                picks = {"g1": ties["g1"][level], "g2": ties["g2"][level], **dict(zip(others, combo))}
                values = problem.evaluate(picks)
                feasible[(level, combo)] = ({d: values[d] / problem.full[d] for d in values},
                                            problem.objective_of(picks))
        # limits between the least and the most any tied picks need, so that the tie level matters
        limits = {d: float(rng.uniform(min(r[d] for r, _ in feasible.values()), max(r[d] for r, _ in
                                                                                        feasible.values())))
                  for d in ("latency", "size")}
        meets = [o for r, o in feasible.values() if all(r[d] <= limits[d] + 1e-12 for d in limits)]
        got = solve(problem, limits, ties=ties)
        if not meets:
            assert got is None
            continue
        assert got is not None and set(got.picks) == set(problem.choices)
        level = next(j for j in range(5) if (got.picks["g1"], got.picks["g2"]) == (ties["g1"][j], ties["g2"][j]))
        assert level != 4
        assert got.objective == pytest.approx(min(meets), abs=1e-6)
        values = problem.evaluate(got.picks)
        for d, limit in limits.items():
            assert got.ratios[d] == pytest.approx(values[d] / problem.full[d]) and got.ratios[d] <= limit + 1e-9
        levels_found.add(level)
    assert len(levels_found) >= 2  # the seeds exercise more than one tie level


def test_neighbours_mix_each_tied_choice_between_the_level_found_and_the_one_before_it():
    # uniform pruning's tie levels step coarsely; with ``neighbours`` each tied choice may stay one level milder on
    # its own: the exact optimum over those mixes (every other choice held at the whole level's pick), within the
    # limits; at the first level nothing is mixed. g2 repeats an option across two levels, as a small group's
    # rounded widths do
    ties = {"g1": [1, 2, 3], "g2": [1, 1, 3]}
    mixed_somewhere = 0
    for seed in range(16):
        rng = np.random.default_rng(300 + seed)
        problem = _random_problem(rng, group_options=4)
        limits = {"latency": float(rng.uniform(0.3, 0.9)), "size": float(rng.uniform(0.3, 0.9))}
        whole = solve(problem, limits, ties=ties)
        before = problem.state()
        got = solve(problem, limits, ties=ties, neighbours=True)
        assert problem.state() == before  # the mix's restrictions are undone
        if whole is None:
            assert got is None
            continue
        level = next(j for j in range(3) if (whole.picks["g1"], whole.picks["g2"]) == (ties["g1"][j], ties["g2"][j]))
        if level == 0:
            assert got.picks == whole.picks
            continue
        state = problem.state()
        for key, choice in problem.choices.items():
            choice.allowed = [i in ((ties[key][level - 1], ties[key][level]) if key in ties else (whole.picks[key],))
                              for i in range(len(choice.labels))]
        expected = _brute_force(problem, limits)
        problem.restore(state)
        assert got.objective == pytest.approx(expected, abs=1e-6)
        assert all(got.picks[k] in (levels[level - 1], levels[level]) for k, levels in ties.items())
        assert all(got.picks[k] == whole.picks[k] for k in ("a", "b", "c"))
        assert all(got.ratios[d] <= limit + 1e-9 for d, limit in limits.items())
        mixed_somewhere += (got.picks["g1"], got.picks["g2"]) not in zip(ties["g1"], ties["g2"])
    assert mixed_somewhere >= 1  # the seeds exercise a mix, not only whole levels


def test_a_uniform_mix_that_is_a_known_plan_gives_way_to_the_whole_level():
    # the searched plan that missed had its back-offs lifted for the uniform solve: the mix can be that very plan
    # (here conv1 at 4 of 8 units, conv2 at 6: 24 of 64 MACs). A known plan is not solved again: the whole level
    # (both at 4; both at 6 is over the budget)
    from slimkit.auto._costs import Analysis
    from slimkit.auto._run import AutoRun

    choices = {f"group:{g}": Choice(f"group:{g}", [8, 6, 4], [0.0, d1, d2], [(0,), (1,), (2,)])
               for g, (d1, d2) in (("conv1", (0.1, 0.2)), ("conv2", (0.3, 0.9)))}
    macs = Term(["group:conv1", "group:conv2"], {"macs": np.outer([8.0, 6.0, 4.0], [8.0, 6.0, 4.0])})
    problem = Problem("onnx", choices, [macs], {"macs": 0.0}, {"macs": 64.0})
    analysis = Analysis(layers={}, base={}, groups={"conv1": {"units": 8}, "conv2": {"units": 8}})
    ties = {"group:conv1": [1, 2], "group:conv2": [1, 2]}  # keep 6 of 8, then 4 of 8
    log = []
    mixed, _, _ = AutoRun._solved(None, "onnx", problem, {"macs": 0.5}, analysis, log, ties)
    assert mixed.prune == {"conv1": 0.5, "conv2": 0.25}  # sensitivity 0.2 + 0.3, the least of the mixes
    whole, _, _ = AutoRun._solved(None, "onnx", problem, {"macs": 0.5}, analysis, log, ties, {mixed.key()})
    assert whole.prune == {"conv1": 0.5, "conv2": 0.5}


def test_a_candidate_folder_is_reused_only_for_the_stages_that_made_it():
    from slimkit.auto._run import _same_stages, scaled_learning_rates

    planned = [{"prune_unstructured": {"sparsity": {"fc1": 0.5}}},
               {"finetune": {"epochs": 2, "lr": 0.05}},
               {"cluster": {"bits": {"fc1": 3}, "seed": 0, "centroid_gradient": "mean"}}]
    assert _same_stages({"stages": planned, "lr_scale": 1.0}, planned)
    assert _same_stages({"stages": scaled_learning_rates(planned, 0.5), "lr_scale": 0.5}, planned)
    # a folder from a slimkit whose format fine-tuned the centroids by their sum is not this plan's result
    older = [*planned[:2], {"cluster": {"bits": {"fc1": 3}, "seed": 0}}]
    assert not _same_stages({"stages": older, "lr_scale": 1.0}, planned)
    assert not _same_stages({"stages": planned, "lr_scale": 0.5}, planned)
    assert not _same_stages({"stages": planned, "lr_scale": "1"}, planned)


def test_a_problem_with_nothing_to_choose_is_the_model_as_it_is():
    # e.g. --knobs int8 leaves the fp32 format no knob: its one plan keeps every layer (scipy's milp refuses an
    # empty program, which crashed auto)
    problem = Problem("onnx", {}, [Term([], {"size": np.array(6.0)})], {"size": 2.0}, {"size": 10.0})
    assert reachable(problem, ["size"]) == {"size": pytest.approx(0.8)}
    assert solve(problem, {"size": 0.8}).picks == {} and solve(problem, {"size": 0.79}) is None
