"""Tiny Hugging Face language models built from configs (random weights, no downloads) for the LM quantization
tests, with a few large input channels as trained LMs have (the outliers SmoothQuant and AWQ exist for)."""

from __future__ import annotations

import warnings

import torch


def tiny_llama(layers: int = 2, hidden: int = 32, kv_heads: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64)
    return _outliers(LlamaForCausalLM(config).eval())


def tiny_gpt2(layers: int = 2, hidden: int = 32):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = GPT2Config(vocab_size=64, n_embd=hidden, n_layer=layers, n_head=4, n_positions=64,
                            bos_token_id=0, eos_token_id=0)
    return _outliers(GPT2LMHeadModel(config).eval())


def _outliers(model):
    with torch.no_grad():
        for module in model.modules():
            if "Norm" in type(module).__name__ and getattr(module, "weight", None) is not None:
                module.weight[:2] *= 12.0
    return model


def token_batches(count: int = 4, batch: int = 4, length: int = 16, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (batch, length), generator=generator) for _ in range(count)]


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).pow(2).mean() / ref.pow(2).mean())
