"""Two tiny causal language models for the standard-library corpus (``slimkit.data`` "stdlib"), as registered names.

``llama_tiny`` is Llama-style (Touvron et al. 2023): RMSNorm pre-norm (Zhang & Sennrich 2019), SwiGLU MLP
(Shazeer 2020), rotary position embeddings (Su et al. 2021) and grouped-query attention with 4 query heads sharing
2 key/value heads (Ainslie et al. 2023). ``gpt2_tiny`` is GPT-2-style (Radford et al. 2019): LayerNorm pre-norm,
GELU MLP of 4× width, learned absolute positions, full multi-head attention. Both are ``transformers`` classes
(``LlamaForCausalLM``, ``GPT2LMHeadModel``), so they keep ``generate`` and ``save_pretrained``, with tied input and
output embeddings and 8 blocks of width 128: ~2M parameters, small enough to train to a useful perplexity on the
corpus in minutes on 2 CPU cores, deep enough that removing blocks is a fine-grained choice.

Token id 0 is the tokenizer's ``<|endoftext|>`` (begin, end and padding).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from slimkit.data import STDLIB_VOCAB
from slimkit.models._hf import check_config_fields, config_error
from slimkit.models._registry import register_model

CONTEXT = 256
_SPECIAL = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)


@register_model("llama_tiny", input_shape=(CONTEXT,), input_dtype="int64", vocab_size=STDLIB_VOCAB,
                paper="Touvron et al. 2023 (LLaMA); Ainslie et al. 2023 (GQA)")
def llama_tiny(vocab_size: int = STDLIB_VOCAB, hidden_size: int = 128, intermediate_size: int = 352,
               num_hidden_layers: int = 8, num_attention_heads: int = 4, num_key_value_heads: int = 2,
               max_position_embeddings: int = 2 * CONTEXT, **config: Any) -> nn.Module:
    """Llama-style LM: 8 blocks, width 128, SwiGLU 352, 4 query heads on 2 KV groups, tied embeddings (~2.0M)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(_config(
        LlamaConfig, "llama_tiny", config, vocab_size=vocab_size, hidden_size=hidden_size,
        intermediate_size=intermediate_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
    ))


@register_model("gpt2_tiny", input_shape=(CONTEXT,), input_dtype="int64", vocab_size=STDLIB_VOCAB,
                paper="Radford et al. 2019 (GPT-2)")
def gpt2_tiny(vocab_size: int = STDLIB_VOCAB, n_embd: int = 128, n_layer: int = 8, n_head: int = 4,
              n_inner: int = 512, n_positions: int = 2 * CONTEXT, **config: Any) -> nn.Module:
    """GPT-2-style LM: 8 blocks, width 128, GELU MLP 512, 4 heads, learned positions, tied embeddings (~2.2M)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(_config(
        GPT2Config, "gpt2_tiny", config, vocab_size=vocab_size, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        n_inner=n_inner, n_positions=n_positions,
    ))


def _config(config_cls: type, name: str, extra: dict[str, Any], **sizes: Any) -> Any:
    """``config_cls`` with ``sizes``, tied embeddings and the tokenizer's special ids, and the ``extra`` options a
    spec gives (``llama_tiny:rms_norm_eps=1e-5``), which must be fields of ``config_cls``: transformers would store an
    unknown one and build the model without it. transformers' own checks (heads that do not divide the width) come
    out as one-line ValueErrors, which :func:`slimkit.models.create` reports with the options."""
    check_config_fields(config_cls, {k: v for k, v in extra.items() if k != "attn_implementation"}, f"model '{name}'")
    try:
        return config_cls(**sizes, tie_word_embeddings=True, **{**_SPECIAL, **extra})
    except Exception as error:  # huggingface_hub's strict-dataclass errors are no ValueErrors
        raise ValueError(config_error(error)) from None
