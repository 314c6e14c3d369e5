import re

import pytest
import torch

from slimkit import ModelSpecError, models
from slimkit.analysis import output_logits, profile


@pytest.mark.parametrize("name", models.names())
def test_every_registered_model_runs_at_its_default_shape(name):
    model = models.create(name).eval()
    x = models.example_input(name, 2)
    assert x.shape == (2, *models.default_input_shape(name))
    out = output_logits(model(x))
    assert out.shape[0] == 2 and torch.isfinite(out).all()


def test_resnet_cifar_parameter_counts_match_the_paper():
    # He et al. 2016 Table 6: ResNet-20 0.27M, ResNet-56 0.85M (3 input channels, option A shortcuts)
    for name, published in (("resnet20", 0.27e6), ("resnet56", 0.85e6)):
        params = profile(models.create(name, in_channels=3), torch.zeros(1, 3, 32, 32)).total.params
        assert abs(params - published) / published < 0.02


def test_spec_parsing_with_options_and_user_file(tmp_path):
    assert models.parse_spec("resnet20:width=0.5,shortcut=B") == ("resnet20", {"width": 0.5, "shortcut": "B"})
    model = models.from_spec("resnet20:width=0.5")
    assert model.conv1.out_channels == 8
    user = tmp_path / "mine.py"
    user.write_text("from torch import nn\n\ndef build(width=4):\n    return nn.Linear(3, width)\n")
    assert models.from_spec(f"{user}:build:width=6", allow_code=True).out_features == 6


def test_a_code_spec_is_imported_only_when_the_caller_allows_it(tmp_path):
    marker = tmp_path / "ran.txt"
    user = tmp_path / "evil.py"
    user.write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                    "from torch import nn\ndef build():\n    return nn.Linear(2, 2)\n")
    assert models.is_code_spec(f"{user}:build") and models.is_code_spec("m.py:f:width=2")
    assert not models.is_code_spec("resnet20:width=0.5")
    with pytest.raises(ModelSpecError, match="imports code only from a spec the user typed"):
        models.from_spec(f"{user}:build")
    assert not marker.exists()


@pytest.mark.parametrize("spec, message", [
    ("lenet5:num_classes=0", "num_classes=0 must be at least 1"),
    ("lenet5:in_channels=0", "in_channels=0 must be at least 1"),
    ("resnet20:width=abc", "must be a finite number"),
    ("resnet20:width=nan", "must be a finite number"),
    ("resnet20:width=-1", "must be positive"),
    ("resnet20:shortcut=Z", "use one of A, B"),
    ("lenet5:conv_relu=3", "true or false"),
    ("mlp1200:dropout=1.5", "dropout rate"),
    ("resnet20:width=1e9", "cannot be built"),
    ("resnet20:width=300", "GiB of weights"),
])
def test_bad_model_options_are_refused_before_anything_is_allocated(spec, message):
    with pytest.raises(ModelSpecError, match=message):
        models.from_spec(spec)


def test_bad_specs_give_clear_errors(tmp_path):
    with pytest.raises(ModelSpecError, match="unknown model 'lenet7'"):
        models.from_spec("lenet7")
    with pytest.raises(ModelSpecError, match="does not take"):
        models.create("lenet5", depth=3)
    with pytest.raises(ModelSpecError, match="does not exist"):
        models.from_spec(f"{tmp_path}/nope.py:build", allow_code=True)
    (tmp_path / "x.py").write_text("value = 3\n")
    with pytest.raises(ModelSpecError, match="no callable 'build'"):
        models.from_spec(f"{tmp_path}/x.py:build", allow_code=True)


def test_models_that_fit_other_inputs_are_named_with_the_option_that_builds_them():
    from slimkit.models._registry import names_for_input

    gray, colour = names_for_input((1, 28, 28)), names_for_input((3, 28, 28))
    assert "lenet5" in gray and "lenet5:in_channels=3" not in gray
    assert "lenet5:in_channels=3" in colour and "lenet5" not in colour
    models.from_spec("lenet5:in_channels=3")(torch.zeros(1, 3, 28, 28))  # the name given builds a model that fits


def test_a_file_factory_that_raises_is_named_with_its_error(tmp_path):
    user = tmp_path / "mine.py"
    user.write_text("def boom():\n    raise ValueError('boom')\n\ndef five():\n    return 5\n")
    with pytest.raises(ModelSpecError, match=re.escape(f"model factory '{user}:boom' raised ValueError: boom")):
        models.from_spec(f"{user}:boom", allow_code=True)
    with pytest.raises(ModelSpecError, match=r"raised TypeError: .*unexpected keyword argument 'width'"):
        models.from_spec(f"{user}:boom:width=2", allow_code=True)
    with pytest.raises(ModelSpecError, match=r"returned int, not a torch\.nn\.Module"):  # unchanged
        models.from_spec(f"{user}:five", allow_code=True)


@pytest.mark.parametrize("spec, message", [
    ("llama_tiny:num_layers=abc", r"model 'llama_tiny' has no config field num_layers: did you mean "
                                  r"num_hidden_layers\? LlamaConfig fields include .*num_hidden_layers"),
    ("gpt2_tiny:n_layers=2", "model 'gpt2_tiny' has no config field n_layers: did you mean n_layer"),
    ("llama_tiny:head_dim=0", "head_dim=0 is not a size"),
    ("llama_tiny:num_attention_heads=3", r"cannot be built with \{'num_attention_heads': 3\} .*hidden size \(128\) "
                                         "is not a multiple of the number of attention heads"),
    ("gpt2_tiny:n_head=3", "cannot be built with .*divisible by num_heads"),
])
def test_the_zoo_language_models_refuse_unknown_options_and_invalid_configs(spec, message):
    with pytest.raises(ModelSpecError, match=message):
        models.from_spec(spec)


def test_the_zoo_language_models_still_take_config_fields():
    assert models.from_spec("llama_tiny:rms_norm_eps=0.001,num_hidden_layers=1").config.rms_norm_eps == 0.001
    assert models.from_spec("gpt2_tiny:n_layer=1,attn_implementation=eager").config._attn_implementation == "eager"


def test_an_input_beyond_the_available_memory_is_refused_before_allocating(monkeypatch):
    from slimkit import ConfigError
    from slimkit.models import _memory

    monkeypatch.setattr(_memory, "available_bytes", lambda: 4 * 2**20)
    models.check_input_memory((1, 1024, 1024), "--input-shape")  # exactly 4 MiB of float32: fits
    with pytest.raises(ConfigError, match=r"--input-shape 1,1025,1024 is too large for this machine's memory: one "
                                          r"input would take 0\.0 GiB"):
        models.check_input_memory((1, 1025, 1024), "--input-shape")


def test_a_model_whose_activations_exceed_memory_says_so():
    class Hungry(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 31987201280 bytes")

    with pytest.raises(ModelSpecError, match=r"needs more memory than this machine has .*: give smaller inputs"):
        models.check_fits(Hungry(), torch.zeros(1, 1, 8, 8), label="hungry", data="--input-shape")
