import json

import pytest
import torch

from slimkit import ModelSpecError, models
from slimkit.analysis import output_logits

EXPECTED_CLASS = {
    "bert": "BertForMaskedLM", "deit": "DeiTForImageClassification", "distilbert": "DistilBertForMaskedLM",
    "gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM", "roberta": "RobertaForMaskedLM", "swin": "SwinForImageClassification",
    "vit": "ViTForImageClassification",
}


@pytest.mark.parametrize("arch", models.HF_ARCHS.names())
def test_every_hf_spec_builds_its_class_and_runs_on_its_example_input(arch):
    spec = f"hf:{arch}"
    model = models.from_spec(spec).eval()
    assert type(model).__name__ == EXPECTED_CLASS[arch]
    x = models.example_input(spec, 2)
    spec_in = models.input_spec(spec)
    assert x.shape == (2, *spec_in.shape) and (x.dtype == torch.long) == spec_in.is_tokens
    with torch.no_grad():
        out = output_logits(model(x))
    assert out.shape[0] == 2 and torch.isfinite(out).all()


def test_hf_spec_options_are_config_fields_and_typos_are_refused():
    model = models.from_spec("hf:llama:hidden_size=32,num_hidden_layers=3,intermediate_size=48")
    assert (model.config.hidden_size, model.config.num_hidden_layers, len(model.model.layers)) == (32, 3, 3)
    gpt2 = models.from_spec("hf:gpt2:hidden_size=32,num_hidden_layers=3")  # aliases of n_embd / n_layer
    assert (gpt2.config.n_embd, gpt2.config.n_layer) == (32, 3)
    assert type(models.from_spec("hf:bert:task=sequence-classification,num_labels=3")).__name__ == \
        "BertForSequenceClassification"
    assert models.input_spec("hf:llama:vocab_size=50").vocab_size == 50
    with pytest.raises(ModelSpecError, match="did you mean hidden_size"):
        models.from_spec("hf:llama:hiden_size=32")
    with pytest.raises(ModelSpecError, match="unknown Hugging Face architecture 'lama'"):
        models.from_spec("hf:lama")
    with pytest.raises(ModelSpecError, match="task 'chat'"):
        models.from_spec("hf:llama:task=chat")


def _saved(tmp_path, spec="hf:gpt2:n_embd=32,n_layer=2"):
    model = models.from_spec(spec).eval()
    folder = tmp_path / "saved"
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder


def test_a_save_pretrained_folder_is_a_spec_that_loads_its_own_class(tmp_path):
    model, folder = _saved(tmp_path)
    loaded = models.from_spec(str(folder)).eval()
    assert type(loaded) is type(model)
    x = models.example_input(str(folder), 2)
    assert x.dtype == torch.long and models.spec_input_shape(str(folder)) == (32,)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)


def test_a_folder_asking_for_custom_code_or_holding_pickles_is_refused_before_loading(tmp_path):
    _, folder = _saved(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "evil.EvilModel"}}))
    with pytest.raises(ModelSpecError, match=r"asks for custom code.*trust_remote_code=False"):
        models.from_spec(str(folder))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text("raise SystemExit('never imported')\n")
    with pytest.raises(ModelSpecError, match="custom code"):
        models.from_spec(str(folder))
    (folder / "evil.py").unlink()
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelSpecError, match=r"no model\.safetensors.*pytorch_model\.bin"):
        models.from_spec(str(folder))
    (folder / "pytorch_model.bin").rename(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["os.system"]}))
    with pytest.raises(ModelSpecError, match="not a transformers model class"):
        models.from_spec(str(folder))


@pytest.mark.slow
def test_a_causal_lm_exports_to_onnx_as_token_ids_to_logits(tmp_path):
    from slimkit.export import export_onnx, onnx_max_abs_diff

    spec = "hf:llama:hidden_size=32,intermediate_size=48,num_attention_heads=4,num_key_value_heads=2,vocab_size=64"
    model = models.from_spec(spec).eval()
    x = models.example_input(spec, 2)
    path = export_onnx(model, x[:1], tmp_path / "lm.onnx")
    assert onnx_max_abs_diff(model, path, x) < 1e-4


@pytest.mark.parametrize("value", ["evil-org/evilkernel", "kernels-community/flash-attn2", "flash_attention_2"])
def test_an_attention_backend_outside_eager_and_sdpa_is_refused_wherever_it_is_written(tmp_path, value):
    """transformers fetches and imports an "org/repo" attention backend from the Hub: a spec (a container header's,
    a run.json's) or a folder's config.json must not choose one."""
    with pytest.raises(ModelSpecError, match="never loads kernel code"):
        models.from_spec(f"hf:llama:attn_implementation={value}")
    with pytest.raises(ModelSpecError, match="never loads kernel code"):
        models.from_spec("hf:llama:experts_implementation=evil-org/evilkernel")
    for registered in ("llama_tiny", "gpt2_tiny"):  # registered models that hand their options to transformers
        with pytest.raises(ModelSpecError, match="never loads kernel code"):
            models.from_spec(f"{registered}:attn_implementation={value}")
    _, folder = _saved(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    for key in ("attn_implementation", "_attn_implementation_internal"):
        (folder / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(ModelSpecError, match=rf"config\.json' sets {key}="):
            models.from_spec(str(folder))
    (folder / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "fp8"}}))
    with pytest.raises(ModelSpecError, match="quantization_config"):
        models.from_spec(str(folder))
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSpecError, match="never loads kernel code"):
        models.from_spec(str(folder), attn_implementation=value)


def test_the_eager_and_sdpa_backends_still_build():
    for value in ("eager", "sdpa"):
        model = models.from_spec(f"hf:llama:attn_implementation={value}")
        assert model.config._attn_implementation == value


def test_sizes_beyond_this_machine_are_refused_before_allocating(tmp_path):
    """An hf: spec (typed, or read from a container's header or a run folder) and a model folder's config.json
    are built on the meta device first: weights beyond this machine's memory are a ModelSpecError in well under a
    second, not an out-of-memory kill."""
    import time

    huge = "hf:llama:hidden_size=64,intermediate_size=100000000000,num_hidden_layers=1,vocab_size=32"
    began = time.perf_counter()
    with pytest.raises(ModelSpecError, match=r"would hold .* GiB of weights, more than this machine's"):
        models.from_spec(huge)
    small = models.from_spec("hf:llama:hidden_size=32,num_hidden_layers=1,intermediate_size=48,vocab_size=32")
    small.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "intermediate_size": 10**11}))
    with pytest.raises(ModelSpecError, match=r"would hold .* GiB of weights"):
        models.from_spec(str(tmp_path / "m"))
    assert time.perf_counter() - began < 30
