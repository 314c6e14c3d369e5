"""The search's cost model against measurement: for any choice of widths, the predicted MACs of the pruned model
equal its profiled MACs, including residual streams whose width is a sum over several channel groups."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from slimkit import models
from slimkit.analysis import profile
from slimkit.auto._costs import Analysis, build_problem, layer_info, plan_of
from slimkit.auto._folder import Cache
from slimkit.auto._sensitivity import Calibration, channel_analysis, channel_groups, keep_levels
from slimkit.prune import PruneConfig, prune_channels


def _channel_entries(model, x, digits, tmp_path):
    """The channel analysis of ``model`` at keep fractions 0.25, 0.5, 0.75 (L1, on the digits' calibration data)."""
    calib = Calibration.build(model, digits.calibration, 32, "loss")
    groups = channel_groups(model, x, ())
    levels = {g: keep_levels(n, (0.25, 0.5, 0.75)) for g, n in groups.items()}
    return channel_analysis(model, x, calib, groups, levels, criterion="l1", data=digits.calibration, skip=(),
                            seed=0, cache=Cache(tmp_path / "c.json", "k"))


@pytest.mark.parametrize("spec", ["auto_digits", "resnet20:width=0.25"])
def test_predicted_macs_equal_the_pruned_models(spec, digits, tmp_path):
    torch.manual_seed(0)
    model = models.from_spec(spec, **({"in_channels": 1} if spec.startswith("resnet") else {})).eval()
    x = torch.zeros(1, 1, 8, 8)
    entries = _channel_entries(model, x, digits, tmp_path)
    analysis = Analysis(layers=layer_info(model, x), base={"macs": profile(model, x).total.macs, "bytes": 1},
                        groups=entries)
    problem = build_problem("onnx", analysis, {"channels"}, ["macs"])
    if spec.startswith("resnet"):  # the stage-3 stream is set by three groups: costed by the bilinear expansion
        assert len(analysis.sides("layer3.1.conv1")[0]) == 3
    rng = np.random.default_rng(0)
    for _ in range(4):
        picks = {k: int(rng.integers(len(c.labels))) for k, c in problem.choices.items()}
        solution = problem.solution(picks)
        plan = plan_of(problem, picks, analysis, solution.ratios, solution.objective)
        pruned = prune_channels(model, x, PruneConfig(ratio=plan.prune or 0.0), data=digits.calibration)
        assert solution.predicted["macs"] == pytest.approx(profile(pruned, x).total.macs, rel=1e-9)


class _Int8Plateau:
    """fp32 layer time ∝ MACs; int8 layer time flat in the widths (as ResNet-20's 28×28 int8 convs measured below
    16 channels); no other ops."""

    def points(self, geometry, points):
        if geometry.precision == "int8":
            return [(0.5, 0.0)] * len(points)
        return [(geometry.macs(ci, co) * 1e-6, 0.0) for ci, co in points]

    def other_share(self, onnx_path, inputs, table_ops):
        return 0.0, 0.0


def test_int8_latency_follows_the_int8_tables_not_the_fp32_ratio(digits, tmp_path):
    _, _, _, analysis = _digits_setup(digits, tmp_path, _Int8Plateau())
    tables = build_problem("int8", analysis, {"channels"}, ["latency"])
    ratio_only = build_problem("int8", _without_int8_tables(analysis), {"channels"}, ["latency"])
    full = {k: 0 for k in tables.choices}
    narrow = {k: len(c.labels) - 1 for k, c in tables.choices.items()}
    assert tables.solution(full).ratios["latency"] == pytest.approx(0.4)  # calibrated to the measured ratio
    assert ratio_only.solution(full).ratios["latency"] == pytest.approx(0.4)
    # pruning to a quarter of the channels: the old composition promised 0.4 × the fp32 gain; the int8 kernels'
    # own (flat) tables say no gain at all
    assert ratio_only.solution(narrow).ratios["latency"] < 0.2
    assert tables.solution(narrow).ratios["latency"] == pytest.approx(0.4)


def _calibrated(tmp_path):
    """auto_digits, its fp32 and int8 tables (an int8 plateau) and the latency payload calibrated to a whole int8
    model measured at 0.4 of fp32."""
    from slimkit.analysis import build_latency_table
    from slimkit.auto._costs import calibrate_int8, table_payload

    torch.manual_seed(0)
    model = models.from_spec("auto_digits").eval()
    x = torch.zeros(1, 1, 8, 8)
    network = tmp_path / "int8.onnx"
    network.write_bytes(b"the deployed int8 file")
    fp32 = build_latency_table(model, x, batch=4, cache_dir=False, measurer=_Int8Plateau())
    int8 = build_latency_table(model, x, batch=4, cache_dir=False, measurer=_Int8Plateau(), precision="int8",
                               network=network)
    latency = {**table_payload(fp32), "int8": 0.4}
    calibrate_int8(latency, table_payload(int8), [])
    return model, x, fp32, int8, latency


def test_a_float_layer_in_the_int8_network_costs_what_was_measured_in_context(digits, tmp_path):
    from slimkit.auto._costs import layer_ms

    model, x, fp32, _, latency = _calibrated(tmp_path)
    full = sum(layer_ms(t) for t in latency["layers"].values())
    latency["int8_float_extra"] = {"conv2": 0.3 * full}  # measured: int8 with conv2 float runs at 0.7 of fp32
    layers = layer_info(model, x)
    analysis = Analysis(layers=layers, base={"macs": 1, "bytes": 1}, int8=dict.fromkeys(layers, 0.0),
                        latency=latency)
    problem = build_problem("int8", analysis, {"int8"}, ["latency"])

    def picks(float_layers):
        return {f"layer:{n}": problem.choices[f"layer:{n}"].labels.index({"int8": n not in float_layers,
                                                                        "rank": None}) for n in layers}

    assert problem.solution(picks(())).ratios["latency"] == pytest.approx(0.4)
    assert problem.solution(picks(("conv2",))).ratios["latency"] == pytest.approx(0.7)
    # a layer with no in-context measurement: its fp32 table time in place of its int8 time, as before
    expected = 0.4 + (fp32.layers["fc1"].full_ms - 0.5 * latency["int8_scale"]) / full
    assert problem.solution(picks(("fc1",))).ratios["latency"] == pytest.approx(expected)


def test_a_factorised_layer_is_priced_by_its_factors_own_timing_in_each_precision(digits, tmp_path):
    from slimkit.auto._costs import layer_ms

    model, x, fp32, int8, latency = _calibrated(tmp_path)
    # fc1's factors at rank ratio 0.25: 0.3 of the layer's time in fp32, 0.9 in int8 (the int8 plateau)
    latency["rank"], latency["rank_int8"] = {"fc1": {"0.25": 0.3}}, {"fc1": {"0.25": 0.9}}
    layers = layer_info(model, x)
    analysis = Analysis(layers=layers, base={"macs": 1, "bytes": 1}, int8=dict.fromkeys(layers, 0.0),
                        rank={"fc1": [{"ratio": 0.25, "params": 0.5, "macs": 0.5, "delta": 0.0}]}, latency=latency)
    full = sum(layer_ms(t) for t in latency["layers"].values())
    fc1_fp32 = fp32.layers["fc1"].full_ms
    fc1_int8 = int8.layers["fc1"].full_ms * latency["int8_scale"]

    def ratio(fmt, option):
        problem = build_problem(fmt, analysis, {"int8", "rank"}, ["latency"])
        unchanged = {"int8": True, "rank": None} if fmt == "int8" else {"rank": None}
        picks = {k: c.labels.index(option if k == "layer:fc1" else unchanged) for k, c in problem.choices.items()}
        return problem.solution(picks).ratios["latency"]

    assert ratio("onnx", {"rank": 0.25}) == pytest.approx(1 - 0.7 * fc1_fp32 / full)
    assert ratio("int8", {"int8": True, "rank": 0.25}) == pytest.approx(0.4 - 0.1 * fc1_int8 / full)


def _flat(ms):
    return {"kind": "linear", "in": 4, "out": 4, "in_grid": [4], "out_grid": [4], "ms": [[ms]], "step_in": 1,
            "step_out": 1}


@pytest.mark.parametrize(("pool_ms", "skip"), [(0.0, ["a"]), (0.5, ["a"]), (0.5, [])])
def test_calibrate_int8_reproduces_a_hand_counted_network(pool_ms, skip):
    from slimkit.auto._costs import calibrate_int8

    # fp32: layers a and b 1 ms each, a pool of pool_ms; int8: b's kernel 0.5 ms, a's 0.25 ms (unless skipped)
    fp32_total = 2.0 + pool_ms
    int8_total = (1.0 if skip else 0.25) + 0.5 + pool_ms
    latency = {"layers": {"a": _flat(1.0), "b": _flat(1.0)}, "other": pool_ms / fp32_total,
               "int8": int8_total / fp32_total}
    # the int8 network's other share, with its float layer counted as a tabled layer (not as other time)
    calibrate_int8(latency, {"layers": {"a": _flat(0.25), "b": _flat(0.5)}, "other": pool_ms / int8_total}, skip)
    assert latency["int8_scale"] == pytest.approx(1.0)  # the isolated timings already add up to the network
    assert latency["int8_other_ms"] == pytest.approx(pool_ms)


class _HalfOther:
    """fp32 kernels ∝ MACs, int8 kernels flat; half of each network's time in other ops, a fifth of that (0.1 of the
    network) outside every kernel."""

    points = _Int8Plateau.points

    def other_share(self, onnx_path, inputs, table_ops):
        return 0.5, 0.1


def _digits_setup(digits, tmp_path, measurer=None):
    """auto_digits, an example, its fp32 table (``measurer``, :class:`_HalfOther` by default) and its analysis:
    channel levels and the latency payload calibrated, with the int8 tables, to a whole int8 model measured at 0.4
    of fp32."""
    from slimkit.analysis import build_latency_table
    from slimkit.auto._costs import calibrate_int8, table_payload

    torch.manual_seed(0)
    model = models.from_spec("auto_digits").eval()
    x = torch.zeros(1, 1, 8, 8)
    entries = _channel_entries(model, x, digits, tmp_path)
    network = tmp_path / "int8.onnx"
    network.write_bytes(b"the deployed int8 file")
    measurer = measurer or _HalfOther()
    fp32 = build_latency_table(model, x, batch=4, cache_dir=False, measurer=measurer)
    int8 = build_latency_table(model, x, batch=4, cache_dir=False, measurer=measurer, precision="int8",
                               network=network)
    latency = {**table_payload(fp32), "int8": 0.4}
    calibrate_int8(latency, table_payload(int8), [])
    analysis = Analysis(layers=layer_info(model, x), base={"macs": 1, "bytes": 1}, groups=entries, latency=latency)
    return model, x, fp32, analysis


def _pruned_by(problem, picks, analysis, model, x, digits):
    solution = problem.solution(picks)
    plan = plan_of(problem, picks, analysis, solution.ratios, solution.objective)
    return solution, prune_channels(model, x, PruneConfig(ratio=plan.prune or 0.0), data=digits.calibration)


def _without_int8_tables(analysis):
    """``analysis`` with the whole int8 ratio alone (as before the int8 kernels had tables)."""
    return replace(analysis, latency={k: v for k, v in analysis.latency.items() if not k.startswith("int8_")})


def _widths(model):
    """Every Conv2d and Linear layer's (in, out) channels."""
    return {n: (m.in_channels, m.out_channels) if isinstance(m, torch.nn.Conv2d) else (m.in_features, m.out_features)
            for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}


def test_fp32_latency_is_the_pruning_tables_prediction_with_other_ops_shrinking(digits, tmp_path):
    # auto's fp32 cost of any widths is the latency table's own prediction (the one latency-aware pruning uses),
    # whose other ops shrink with the outputs: not a constant half of the input model's time
    model, x, fp32, analysis = _digits_setup(digits, tmp_path)
    problem = build_problem("onnx", analysis, {"channels"}, ["latency"])
    rng = np.random.default_rng(0)
    narrow = {k: len(c.labels) - 1 for k, c in problem.choices.items()}
    for picks in [narrow] + [{k: int(rng.integers(len(c.labels))) for k, c in problem.choices.items()}
                             for _ in range(3)]:
        solution, pruned = _pruned_by(problem, picks, analysis, model, x, digits)
        assert solution.ratios["latency"] == pytest.approx(fp32.predict_ratio(_widths(pruned)), rel=1e-9)
    assert problem.solution(narrow).ratios["latency"] < 0.5  # the constant share alone was 0.5


def test_int8_other_ops_stay_constant_with_the_int8_tables_and_shrink_without(digits, tmp_path):
    # with its own tables the int8 network's other ops are a constant (measured better so): flat int8 kernels give
    # no gain at any width. Without them, the fp32 prediction (other ops shrinking) times the whole int8 ratio
    model, x, fp32, analysis = _digits_setup(digits, tmp_path)
    tables = build_problem("int8", analysis, {"channels"}, ["latency"])
    ratio_only = build_problem("int8", _without_int8_tables(analysis), {"channels"}, ["latency"])
    narrow = {k: len(c.labels) - 1 for k, c in tables.choices.items()}
    assert tables.solution(narrow).ratios["latency"] == pytest.approx(0.4)
    solution, pruned = _pruned_by(ratio_only, narrow, analysis, model, x, digits)
    assert solution.ratios["latency"] == pytest.approx(0.4 * fp32.predict_ratio(_widths(pruned)), rel=1e-9)


def _before_split(payload):
    """A table payload as kept before the other ops were split: no fixed part, no layer output shares."""
    return {**{k: v for k, v in payload.items() if k != "other_fixed"},
            "layers": {n: {k: v for k, v in t.items() if k != "outputs"} for n, t in payload["layers"].items()}}


def test_a_table_kept_before_the_other_ops_were_split_prices_them_constant(digits, tmp_path):
    from slimkit.auto._costs import table_payload

    _, _, fp32, analysis = _digits_setup(digits, tmp_path)
    problem = build_problem("onnx", replace(analysis, latency=_before_split(table_payload(fp32))), {"channels"},
                            ["latency"])
    assert problem.solution({k: 0 for k in problem.choices}).ratios["latency"] == pytest.approx(1.0)
    narrow = {k: len(c.labels) - 1 for k, c in problem.choices.items()}
    assert problem.solution(narrow).ratios["latency"] > 0.5  # the constant half, and the layers' own share


@pytest.mark.parametrize("spec", ["auto_digits", "resnet20:width=0.25,in_channels=1"])
def test_a_channel_pruned_containers_bytes_and_macs_are_predicted_from_the_whole_layers_analysis(spec, trained, digits,
                                                                                                 tmp_path):
    """The container analysis measures each whole layer's exact bytes; a plan that also removes channels is priced
    by scaling them (the codebook and Huffman tables stay, the index streams follow the weights, the bias the
    outputs), plus the header's record of the pruned layout, less the normalisation tensors it removes (ResNet's
    BatchNorms, 8 % of this ResNet's 8-bit file). Every plan's deployed file, made by the format's own stages, lands
    within a few percent of its prediction — on ResNet's residual streams too, whose layers follow several groups;
    MACs exactly."""
    from slimkit.auto import AutoConfig
    from slimkit.auto._apply import run_stages
    from slimkit.auto._formats import create_format
    from slimkit.auto._sensitivity import container_analysis, other_state_bytes
    from slimkit.share import ClusterConfig, cluster_weights, save_compressed

    torch.manual_seed(0)
    model = trained[0] if spec == "auto_digits" else models.from_spec(spec).eval()
    x = torch.zeros(1, 1, 8, 8)
    layers = layer_info(model, x)
    calib = Calibration.build(model, digits.calibration, 32, "loss")
    container = container_analysis(model, calib, list(layers), (0.5, 0.9), (8, 4, 2), method="loss", traces=None,
                                   seed=0, cache=Cache(tmp_path / "k.json", "k"))
    reference = cluster_weights(model, None, ClusterConfig(bits=dict.fromkeys(layers, 8), seed=0))
    base = {"macs": profile(model, x).total.macs, "bytes": 1,
            "container_bytes": save_compressed(reference, tmp_path / "ref.slim", spec).file_bytes}
    analysis = Analysis(layers=layers, base=base, groups=_channel_entries(model, x, digits, tmp_path),
                        container=container)
    problem = build_problem("container", analysis, {"channels", "sparsity", "clusters"}, ["size", "macs"])
    groups = [k for k in problem.choices if k.startswith("group:")]
    assert len(groups) >= 3
    if spec.startswith("resnet"):
        assert other_state_bytes(model) > 0.05 * base["container_bytes"]  # BatchNorms, stored raw
    config = AutoConfig(budget="size=0.5", recovery_epochs=0, cluster_epochs=0, prune_rounds=1)
    rng = np.random.default_rng(0)
    errors = []
    for i in range(4):
        # every group pruned, or about half of them (the others at full width)
        low = 1 if i % 2 == 0 else 0
        picks = {k: int(rng.integers(low, len(c.labels))) for k, c in problem.choices.items()}
        solution = problem.solution(picks)
        plan = plan_of(problem, picks, analysis, solution.ratios, solution.objective)
        assert plan.prune
        stages = create_format("container").stages(plan, config)
        assert [next(iter(s)) for s in stages][:2] == ["prune", "prune_unstructured" if plan.sparsity else "cluster"]
        out = run_stages(model, stages, data=digits, example=x, seed=0, folder=None)
        written = save_compressed(out, tmp_path / f"{i}.slim", spec).file_bytes
        errors.append(solution.predicted["size"] / written - 1)
        assert solution.predicted["macs"] == pytest.approx(profile(out, x).total.macs, rel=1e-9)
    # within 5 % of files of 1 to 5 KB, whose header is a third of them (the pruned widths make its shape lists
    # compress a little worse than the layout records predict)
    assert all(-0.05 <= e <= 0.06 for e in errors), errors
