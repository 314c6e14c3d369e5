import torch

from slimkit.auto import AutoConfig
from slimkit.auto._apply import run_stages
from slimkit.auto._formats import create_format
from slimkit.auto._plan import Plan
from slimkit.quantize import quant_report


def test_a_factorised_layer_kept_float_in_the_int8_format_keeps_its_factors_float(trained, digits, tmp_path):
    """The quantize stage runs after the decomposition, when fc1 is fc1.0 and fc1.1: the plan's "fc1 stays float"
    must reach them (the literal name alone is no weighted layer there, and would be refused)."""
    model, _ = trained
    plan = Plan(format="int8", rank={"fc1": 0.5}, float_layers=["fc1", "conv1"])
    stages = create_format("int8").stages(plan, AutoConfig(budget="size=0.5", recovery_epochs=0))
    out = run_stages(model, stages, data=digits, example=torch.zeros(1, 1, 8, 8), seed=0, folder=tmp_path)
    report = quant_report(out)
    factors = [name for name, module in out.named_modules() if name.startswith("fc1.") and hasattr(module, "weight")]
    assert len(factors) == 2 and set(factors) <= set(report.float_layers)
    assert "conv1" in report.float_layers and "conv2" in report.quantized


def test_the_container_format_fine_tunes_centroids_by_their_mean_gradient(trained, digits, tmp_path):
    # a few bits leave thousands of weights on one centroid; the summed gradient's steps collapsed LeNet-5
    model, _ = trained
    plan = Plan(format="container", sparsity={"fc1": 0.5}, bits={"conv1": 2, "conv2": 2, "fc1": 2, "fc2": 3})
    stages = create_format("container").stages(plan, AutoConfig(budget="size=0.1", recovery_epochs=0,
                                                                cluster_epochs=0))
    assert next(s["cluster"] for s in stages if "cluster" in s)["centroid_gradient"] == "mean"
    out = run_stages(model, stages, data=digits, example=torch.zeros(1, 1, 8, 8), seed=0, folder=tmp_path)
    layers = [m for m in out.modules() if hasattr(m, "centroid_gradient")]
    assert layers and all(m.centroid_gradient == "mean" for m in layers)


def test_the_container_prunes_channels_of_models_it_can_rebuild_pruned_only(trained):
    # a pruned Hugging Face model keeps its sizes in its config too, which a container does not record (such a
    # model is saved with save_pruned): its container plans keep every channel
    from tests.quantize._lm import tiny_llama

    container = create_format("container")
    assert "channels" in container.knobs_for(trained[0])
    assert container.knobs_for(tiny_llama()) == {"sparsity", "clusters"}
    assert "channels" in create_format("onnx").knobs_for(tiny_llama())
