"""A run folder holding a Hugging Face language model exports like any other: ONNX checked against the model's
logits (not its output object), TorchScript refused with the fix named."""

from types import SimpleNamespace

import pytest
import torch

from slimkit._errors import ConfigError
from slimkit.pipeline._exporting import export_model
from tests.quantize._lm import tiny_llama


def _token_data():
    tokens = torch.randint(1, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    return SimpleNamespace(test=SimpleNamespace(inputs=tokens))


def test_an_hf_language_model_exports_to_onnx_checked_on_its_logits(tmp_path):
    check = export_model(tiny_llama(), _token_data(), tmp_path / "lm.onnx", "onnx")
    assert check["ok"] and check["max_abs_diff"] < 1e-4 and check["argmax_agreement"] == 1.0
    assert (tmp_path / "lm.onnx").is_file()


def test_torchscript_of_an_hf_language_model_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="use --format onnx"):
        export_model(tiny_llama(), _token_data(), tmp_path / "lm.ts", "torchscript")
    assert not list(tmp_path.iterdir())
