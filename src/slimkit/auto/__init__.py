"""Automatic compression: given a model, data and a budget (latency, file size, MACs), find the mix of channel
pruning, low-rank factorisation, int8 / mixed precision, sparsity and weight sharing that keeps the most accuracy,
carry it out with recovery, and verify it by measurement.

``auto_compress(model, example_inputs, AutoConfig(budget="latency=0.4", max_drop=0.5), data=data)`` returns the
compressed model; ``auto_report(model)`` says what was chosen, every candidate tried, and the recipe that reproduces
it. ``slimkit auto MODEL -c ckpt --data mnist --budget latency=0.4 --out DIR`` does the same from the command line.

How: per-layer sensitivity of every knob on calibration data (measured loss increase, or HAWQ-V2's Hessian-trace
estimate), per-layer costs (profiled MACs, deployed bytes per format, measured ONNX Runtime latency tables), an
integer program over all layers' choices under every budget at once (scipy's HiGHS), then recovery (KD or
fine-tuning), measurement of the deployed file, and an accuracy-aware back-off loop (NNCF-style) on the validation
split. See ``_run.py`` for the loop, ``_search.py`` for the program, ``_sensitivity.py`` and ``_costs.py`` for what
feeds it.
"""

from slimkit.auto._auto import AutoResult, BudgetNotMet, auto_compress, auto_report
from slimkit.auto._budget import Budget, parse_budget
from slimkit.auto._config import KNOBS, SENSITIVITY_METHODS, AutoConfig
from slimkit.auto._formats import FORMATS, DeployFormat, register_format
from slimkit.auto._measure import LatencyMeter, OrtLatency
from slimkit.auto._plan import Plan
from slimkit.auto._search import Choice, Problem, Solution, Term, solve

__all__ = [
    "FORMATS",
    "KNOBS",
    "SENSITIVITY_METHODS",
    "AutoConfig",
    "AutoResult",
    "Budget",
    "BudgetNotMet",
    "Choice",
    "DeployFormat",
    "LatencyMeter",
    "OrtLatency",
    "Plan",
    "Problem",
    "Solution",
    "Term",
    "auto_compress",
    "auto_report",
    "parse_budget",
    "register_format",
    "solve",
]
