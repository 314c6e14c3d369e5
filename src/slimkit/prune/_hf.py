"""Hugging Face models after structured pruning: their config rewritten to the new sizes, and a save/load format for
prunings no config can describe.

:func:`rewrite_config_` sets ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``intermediate_size``
and ``hidden_size`` (through each config's own field names: GPT-2's ``n_head``/``n_inner``/``n_embd``,
DistilBERT's ``n_heads``/``hidden_dim``/``dim``) when every layer agrees, then builds the class from the new config
on the meta device and compares every parameter shape with the pruned model's: equal shapes mean
``save_pretrained`` → ``from_pretrained`` reproduces the pruned model exactly. When they differ — one global size
cannot describe a non-uniform pruning (global ranking keeps different widths per layer), or the architecture
derives the head size as ``hidden_size / num_attention_heads`` (BERT, RoBERTa, DistilBERT, ViT, DeiT, GPT-2 and
Swin do; Llama, Mistral and Qwen2 read an explicit ``head_dim``) — :func:`save_pruned` / :func:`load_pruned` store
the model in slimkit's own folder format instead: the unpruned config and the architecture's class name (resolved
only among ``transformers``' model classes: no file names code to import), every tensor's shape and the size
attributes pruning set (JSON), and the weights (safetensors; never a pickle).

``transformers`` is imported here only, and only for Hugging Face models.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from slimkit._errors import CheckpointError, ConfigError, SlimkitError
from slimkit.prune._layout import apply_layout_

log = logging.getLogger(__name__)

FORMAT = "slimkit-pruned"
VERSION = 1
META_FILE = "slimkit_pruned.json"
#: what a damaged folder's error tells the user to do
SAVE_AGAIN = "the folder is damaged, save it again with save_pruned"
WEIGHTS_FILE = "model.safetensors"

#: config field → the attribute names different configs use for it (``attribute_map`` covers most aliases)
_FIELDS = {
    "heads": ("num_attention_heads",),
    "kv_heads": ("num_key_value_heads",),
    "intermediate": ("intermediate_size", "n_inner", "hidden_dim", "ffn_dim"),
    "hidden": ("hidden_size",),
}
_HEAD_ATTRS = ("num_attention_heads", "num_heads", "n_heads", "n_head")
_HEAD_SIZE_ATTRS = ("head_dim", "attention_head_size", "head_size")
_MLP_IN = ("gate_proj", "up_proj", "fc1", "c_fc", "lin1", "fc_in", "w1", "dense_h_to_4h")


def is_hf_model(model: nn.Module) -> bool:
    """Whether ``model`` is a ``transformers`` ``PreTrainedModel`` (checked without importing transformers)."""
    return any(k.__module__.startswith("transformers.") and k.__name__ == "PreTrainedModel"
               for k in type(model).__mro__)


def _width(module: nn.Module) -> int | None:
    """Output width of a Linear or transformers Conv1D."""
    if isinstance(module, nn.Linear):
        return module.out_features
    nf = getattr(module, "nf", None)
    return int(nf) if isinstance(nf, int) else None


def _layers(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks: the longest ModuleList of modules of one class (all of them for Swin's
    per-stage lists)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0
             and len({type(x) for x in m}) == 1 and any(p.dim() >= 2 for p in m.parameters())]
    if not lists:
        return []
    kind = type(max(lists, key=len)[0])
    return [block for ml in lists if type(ml[0]) is kind for block in ml]


def _attention(layer: nn.Module) -> nn.Module | None:
    for _, module in layer.named_modules():
        name = type(module).__name__
        if "Attention" in name and "Output" not in name and any(_width(c) for c in module.children()):
            return module
    return None


def _layer_sizes(layer: nn.Module) -> dict[str, int | None]:
    attn = _attention(layer)
    sizes: dict[str, int | None] = {"heads": None, "kv_heads": None, "head_dim": None, "intermediate": None}
    if attn is not None:
        head_dim = next((getattr(attn, a) for a in _HEAD_SIZE_ATTRS if isinstance(getattr(attn, a, None), int)),
                        None)
        heads = next((getattr(attn, a) for a in _HEAD_ATTRS if isinstance(getattr(attn, a, None), int)), None)
        children = dict(attn.named_children())
        q = next((children[n] for n in ("q_proj", "query", "q_lin", "q") if n in children), None)
        k = next((children[n] for n in ("k_proj", "key", "k_lin", "k") if n in children), None)
        if heads is None and head_dim and q is not None:
            heads = _width(q) // head_dim
        if head_dim is None and heads and q is not None:
            head_dim = _width(q) // heads
        sizes.update(heads=heads, head_dim=head_dim)
        if k is not None and head_dim:
            sizes["kv_heads"] = _width(k) // head_dim
    for name, module in layer.named_modules():
        if name.rpartition(".")[2] in _MLP_IN and _width(module):
            sizes["intermediate"] = _width(module)
            break
    return sizes


def _hidden(model: nn.Module) -> int | None:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(emb, nn.Embedding):
        return emb.embedding_dim
    for module in model.modules():  # a vision model: its patch embedding
        if isinstance(module, nn.Conv2d):
            return module.out_channels
    return None


def _uniform(values: Iterable[int | None]) -> int | None:
    found = {v for v in values if v is not None}
    return found.pop() if len(found) == 1 else None


def _config_fields(config: Any) -> dict[str, str]:
    """Our field → the config's own attribute name (the first alias it has)."""
    out = {}
    for field, names in _FIELDS.items():
        for name in names:
            if hasattr(config, name) or name in getattr(config, "attribute_map", {}):
                out[field] = name
                break
    return out


def rewrite_config_(model: nn.Module) -> dict[str, Any]:
    """Set ``model.config``'s size fields to the pruned model's sizes (in place on the model's own config) and
    check the result: ``{"exact": bool, "fields": {name: value}, "reason": str | None, "base_config": {...}}``.
    ``exact`` means the class built from the new config has exactly the pruned model's parameter shapes, so
    ``save_pretrained`` → ``from_pretrained`` round-trips; else use :func:`save_pruned`."""
    config = model.config
    base = config.to_dict()
    layers = _layers(model)
    per_layer = [_layer_sizes(layer) for layer in layers]
    found = {key: _uniform(s[key] for s in per_layer) for key in ("heads", "kv_heads", "head_dim", "intermediate")}
    found["hidden"] = _hidden(model)
    names = _config_fields(config)
    updates: dict[str, int] = {}
    nonuniform = [k for k in ("heads", "kv_heads", "intermediate")
                  if len({s[k] for s in per_layer if s[k] is not None}) > 1]
    for key, value in found.items():
        name = names.get(key)
        if name is None or value is None:
            continue
        if key == "intermediate" and name == "n_inner" and value == 4 * (found["hidden"] or 0) and \
                getattr(config, "n_inner", None) is None:
            continue
        if key != "head_dim" and getattr(config, name, None) != value:
            updates[name] = value
            setattr(config, name, value)
    if found["head_dim"] is not None and getattr(config, "head_dim", None) != found["head_dim"]:
        # explicit, for classes that read config.head_dim and would otherwise derive it from the new hidden size
        config.head_dim = found["head_dim"]
        updates["head_dim"] = found["head_dim"]
    reason = _shape_check(model)
    if reason is None:
        return {"exact": True, "fields": updates, "reason": None, "base_config": base}
    if nonuniform:
        reason = (f"{', '.join(nonuniform)} differ between layers (one config value cannot describe them); "
                  f"{reason}")
    return {"exact": False, "fields": updates, "reason": reason, "base_config": base}


def _shape_check(model: nn.Module) -> str | None:
    """None if ``type(model)(model.config)`` builds exactly the pruned model's tensor shapes, else the first
    difference."""
    try:
        with torch.device("meta"):
            reference = type(model)(model.config)
    except Exception as error:  # a config the class rejects (e.g. hidden size not divisible by heads)
        return f"{type(model).__name__} cannot be built from the rewritten config ({type(error).__name__}: {error})"
    validate = getattr(model.config, "validate", None)
    if callable(validate):
        try:
            validate()
        except Exception as error:  # e.g. "hidden size not a multiple of the number of heads" at save time
            cause = error.__cause__ or error
            return f"the rewritten config does not validate ({type(cause).__name__}: {cause})"
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    for key, shape in want.items():
        if got.get(key) != shape:
            return (f"from the config {type(model).__name__} builds {key} as {got.get(key)}, the pruned model has "
                    f"{shape}")
    return None


# --- slimkit's folder format ----------------------------------------------------------------------------------

def save_pruned(model: nn.Module, folder: str | os.PathLike) -> Path:
    """Write a pruned Hugging Face model to ``folder`` (new or empty) in slimkit's format: the unpruned config,
    the architecture's class name, every tensor's shape and the size attributes pruning set (JSON), and the weights
    (safetensors). Read it back with :func:`load_pruned`. Works for every pruning, uniform or not."""
    from safetensors.torch import save

    from slimkit import __version__
    from slimkit._io import atomic_write
    from slimkit.prune._structured import pruning_info

    info = pruning_info(model)
    if not is_hf_model(model) or info is None or not info.get("hf_config"):
        raise ConfigError("save_pruned takes a Hugging Face model returned by prune_channels; for other models "
                          "save the state dict and replay the pruning (prune_channels is deterministic)")
    target = Path(folder)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"'{target}' exists and is not an empty folder: choose a new folder (nothing is "
                          "overwritten)")
    tensors, tied = _unique_tensors(model)
    meta = {
        "format": FORMAT, "version": VERSION, "slimkit": __version__,
        "architecture": type(model).__name__, "model_type": model.config.model_type,
        "base_config": info["hf_config"]["base_config"], "config": model.config.to_dict(),
        "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
        "tied": tied, "attributes": info.get("attributes", {}),
        "pruning": {k: info[k] for k in ("groups", "kinds", "ratio", "config") if k in info},
    }
    target.mkdir(parents=True, exist_ok=True)
    with atomic_write(target / WEIGHTS_FILE, "wb") as handle:
        handle.write(save(tensors, metadata={"format": FORMAT}))
    with atomic_write(target / META_FILE, "w") as handle:
        handle.write(json.dumps(meta, indent=1, default=_json_default) + "\n")
    return target


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def _unique_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with tied tensors stored once (``tied`` maps each alias to the stored name)."""
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple], str] = {}
    for key, value in model.state_dict().items():
        ident = (value.data_ptr(), value.storage_offset(), tuple(value.shape))
        if value.numel() and ident in seen:
            tied[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = value.detach().contiguous()
    return tensors, tied


def _architecture(name: str) -> type:
    import transformers

    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise CheckpointError(f"'{name}' is not a transformers model class: the folder is not a slimkit pruned "
                              "model, or needs a newer transformers")
    return cls


def load_pruned(folder: str | os.PathLike) -> nn.Module:
    """Read a model written by :func:`save_pruned`: build the architecture from its unpruned config with its
    parameters on the meta device (no memory, no initialisation: :func:`parameters_on_meta`), give every tensor its
    pruned shape and size attributes, load the weights into them (strictly) and set the rewritten config. Runs no
    code from the folder."""
    from safetensors.torch import load_file

    from slimkit.models import buffer_bytes, check_backends, within_memory
    from slimkit.prune._structured import set_pruning_info

    target = Path(folder)
    try:
        meta = json.loads((target / META_FILE).read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"'{target}' has no readable {META_FILE} ({error}): save it with save_pruned") from None
    if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
        raise CheckpointError(f"'{target}/{META_FILE}' is not a slimkit pruned model of version ≤ {VERSION}")
    from transformers import AutoConfig

    where = f"'{target / META_FILE}'"
    fields = {"architecture": str, "model_type": str, "base_config": dict, "config": dict, "shapes": dict,
              "attributes": dict, "tied": dict, "pruning": dict}
    bad = [k for k, kind in fields.items() if k in meta and not isinstance(meta[k], kind)]
    absent = [k for k in ("architecture", "model_type", "base_config", "config", "shapes") if k not in meta]
    if bad or absent:
        raise CheckpointError(f"{where} is damaged ({'missing ' + ', '.join(absent) if absent else ''}"
                              f"{'; ' if bad and absent else ''}{'wrong type: ' + ', '.join(bad) if bad else ''}): "
                              "save the model again with save_pruned")
    cls = _architecture(meta["architecture"])
    base = dict(meta["base_config"])
    for fields_ in (base, meta["config"]):
        check_backends(fields_, where)
    try:
        config = AutoConfig.for_model(meta["model_type"], **{k: v for k, v in base.items() if k != "model_type"})
        # its parameters stay on the meta device: only the buffers are allocated before the pruned weights load
        model = within_memory(lambda: _built_without_parameters(cls, config),
                              f"{where}'s unpruned {meta['architecture']}", error=CheckpointError, size=buffer_bytes)
    except SlimkitError:
        raise
    except Exception as error:  # transformers' own checks of the config (ValueError, strict-dataclass errors, ...)
        raise CheckpointError(f"{where}: its {meta['architecture']} cannot be built from its config "
                              f"({type(error).__name__}: {error}): the folder is damaged, save it again with "
                              "save_pruned") from None
    apply_layout_(model, meta["shapes"], meta.get("attributes", {}), where, fix=SAVE_AGAIN)
    state = load_file(str(target / WEIGHTS_FILE))
    tied = meta.get("tied", {})
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise CheckpointError(f"'{target}' does not match its architecture: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}")
    _retie_(model, tied, where)
    # the rewritten sizes, set on the config object every module shares (its attention backend choice stays)
    try:
        model.config.update({k: v for k, v in meta["config"].items()
                             if k not in ("model_type", "transformers_version")})
    except Exception as error:  # transformers validates the fields it sets
        raise CheckpointError(f"{where}: its rewritten config does not apply ({type(error).__name__}: {error}): "
                              "the folder is damaged, save it again with save_pruned") from None
    set_pruning_info(model, dict(meta.get("pruning", {}), attributes=meta.get("attributes", {}),
                                 hf_config={"exact": False, "base_config": base}))
    return model.eval()


class _EmptyOnMeta(TorchFunctionMode):
    """``torch.empty`` on the meta device: how layers allocate the parameters they initialise next."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.empty:
            kwargs = {**kwargs, "device": "meta"}
        return func(*args, **kwargs)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside hold their parameters on the meta device: no memory, no initialisation. Layers allocate
    their parameters with ``torch.empty``, which goes to the meta device here, and any parameter made otherwise
    (a norm's ``torch.ones``) is moved there when it is registered. Other tensors stay real, so buffers computed in
    ``__init__`` (rotary frequencies, position ids), which no weights file holds, keep their values (accelerate's
    ``init_empty_weights(include_buffers=False)`` does the registering half of this)."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        with _EmptyOnMeta():
            yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def _built_without_parameters(cls: type, config: Any) -> nn.Module:
    with parameters_on_meta():
        return cls(config)


def _retie_(model: nn.Module, tied: dict[str, str], where: str) -> None:
    """Point every tied alias (e.g. ``lm_head.weight``) at the tensor loaded under the name it was stored by (loading
    by assignment replaced that tensor, not its aliases), then check that no parameter or buffer is left on the meta
    device."""
    for alias, stored in tied.items():
        owner, _, attr = str(alias).rpartition(".")
        try:
            setattr(model.get_submodule(owner), attr, model.get_parameter(str(stored)))
        except (AttributeError, TypeError, KeyError) as error:
            raise CheckpointError(f"{where}: its tied tensor '{alias}' → '{stored}' is not in the model ({error}): "
                                  f"{SAVE_AGAIN}") from None
    left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.device.type == "meta"]
    if left:
        raise CheckpointError(f"{where}: no weights for {', '.join(left[:5])}: {SAVE_AGAIN}")
