"""Hugging Face ``transformers`` models as model specs: ``hf:<arch>`` built from a small config, and local
``save_pretrained`` folders, loaded without running code.

``hf:llama``, ``hf:gpt2:n_layer=4``, ``hf:bert:task=sequence-classification,num_labels=3``: the architecture's
config class with slimkit's small defaults (:data:`HF_ARCHS`), the spec's options as config fields (unknown fields
are refused, not silently stored), random weights, and the architecture's usual head (``task``). ``transformers``
is imported only when such a spec is built.

A folder written by ``save_pretrained`` loads with its own class (``config.json``'s ``architectures``), which must
be one of ``transformers``' built-in classes: a config that names custom code (``auto_map``) is refused before
anything is imported, weights load from safetensors only, and nothing is fetched from the hub.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from slimkit._errors import ModelSpecError
from slimkit._registry import Registry
from slimkit.models._memory import check_fits_memory, within_memory

#: spec prefix of config-built Hugging Face models
HF_PREFIX = "hf:"

#: ``task`` option → the ``transformers`` auto class that builds that head
HF_TASKS = {
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "image-classification": "AutoModelForImageClassification",
    "base": "AutoModel",
}
_FACTORY_OPTIONS = ("task", "attn_implementation")
#: the attention backends a model may be built with: transformers takes any other "org/repo" value for a kernel on
#: the Hugging Face Hub, which it downloads and imports (code a config file or spec would choose, not the user)
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
#: the mixture-of-experts backends a model may be built with (others load kernels from the Hub)
EXPERTS_IMPLEMENTATIONS = ("eager", "grouped_mm", "batched_mm")
#: config fields that choose kernels transformers may fetch from the Hub, or a quantized backend with its own code
_KERNEL_FIELDS = ("attn_implementation", "_attn_implementation", "_attn_implementation_internal",
                  "experts_implementation", "_experts_implementation", "_experts_implementation_internal",
                  "quantization_config")


def check_backends(values: Mapping[str, Any], where: str) -> None:
    """Refuse, with :class:`ModelSpecError`, config fields or build options in ``values`` that would make
    transformers fetch or import kernel code: an attention backend other than :data:`ATTN_IMPLEMENTATIONS`, an
    experts backend naming a Hub repository, any ``quantization_config`` (slimkit builds float models)."""
    for key in _KERNEL_FIELDS:
        value = values.get(key)
        if value is None:
            continue
        if "attn" in key:
            allowed = isinstance(value, str) and value in ATTN_IMPLEMENTATIONS
        elif "experts" in key:
            allowed = isinstance(value, str) and value in EXPERTS_IMPLEMENTATIONS
        else:
            allowed = False
        if not allowed:
            raise ModelSpecError(f"{where} sets {key}={value!r}: slimkit builds models only with the attention "
                                 f"backends {', '.join(ATTN_IMPLEMENTATIONS)} (experts: "
                                 f"{', '.join(EXPERTS_IMPLEMENTATIONS)}) and never loads kernel code from the Hugging "
                                 f"Face Hub or a quantization backend; remove {key} (or use one of those)")


@dataclass(frozen=True)
class HFArch:
    """A config-built architecture: its ``model_type``, default head, small default config and input kind
    (``"tokens"``: ``seq_len`` token ids; ``"image"``: ``num_channels × image_size × image_size`` pixels)."""

    model_type: str
    task: str
    defaults: dict[str, Any] = field(default_factory=dict)
    inputs: str = "tokens"
    seq_len: int = 32


HF_ARCHS: Registry[HFArch] = Registry("Hugging Face architecture")

_DECODER = dict(vocab_size=1024, hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256)
_ENCODER = dict(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=256)
_VIT = dict(image_size=32, patch_size=4, num_channels=3, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_labels=10)
for _name, _arch in {
    "llama": HFArch("llama", "causal-lm", dict(_DECODER)),
    "mistral": HFArch("mistral", "causal-lm", dict(_DECODER, sliding_window=None)),
    "qwen2": HFArch("qwen2", "causal-lm", dict(_DECODER)),
    "gpt2": HFArch("gpt2", "causal-lm", dict(vocab_size=1024, n_embd=128, n_layer=2, n_head=4, n_positions=256,
                                            bos_token_id=0, eos_token_id=0)),
    "bert": HFArch("bert", "masked-lm", dict(_ENCODER)),
    "roberta": HFArch("roberta", "masked-lm", dict(_ENCODER, max_position_embeddings=258, pad_token_id=1,
                                                  bos_token_id=0, eos_token_id=2)),
    "distilbert": HFArch("distilbert", "masked-lm", dict(vocab_size=1024, dim=128, hidden_dim=256, n_layers=2,
                                                        n_heads=4, max_position_embeddings=256)),
    "vit": HFArch("vit", "image-classification", dict(_VIT), inputs="image"),
    "deit": HFArch("deit", "image-classification", dict(_VIT), inputs="image"),
    "swin": HFArch("swin", "image-classification", dict(image_size=32, patch_size=2, num_channels=3, embed_dim=32,
                                                       depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=10),
                   inputs="image"),
}.items():
    HF_ARCHS.register(_name)(_arch)


def _transformers():
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - installed with slimkit's "hf" extra
        raise ModelSpecError("Hugging Face models need 'transformers': pip install 'slimkit[hf]'") from error
    return transformers


def is_hf_spec(target: str) -> bool:
    """True for ``hf:<arch>`` targets."""
    return target.startswith(HF_PREFIX)


def hf_arch(target: str) -> HFArch:
    """The :class:`HFArch` of an ``hf:<arch>`` target, with a clear error listing the known ones."""
    name = target[len(HF_PREFIX):]
    if name not in HF_ARCHS:
        raise ModelSpecError(f"unknown Hugging Face architecture '{name}' in '{target}': choose one of "
                             f"{', '.join('hf:' + n for n in HF_ARCHS.names())}, or give a save_pretrained folder")
    return HF_ARCHS.get(name)


#: config fields that are sizes or counts: an ``hf:`` option setting one must be a whole number ≥ 1
_SIZE_FIELDS = frozenset({
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "vocab_size", "max_position_embeddings", "image_size", "patch_size", "num_channels", "n_embd",
    "n_layer", "n_head", "n_inner", "n_positions", "d_model", "num_layers", "num_heads", "d_ff", "encoder_layers",
    "decoder_layers", "encoder_attention_heads", "decoder_attention_heads", "dim", "hidden_dim", "n_heads",
    "n_layers", "num_labels"})


def hf_config(target: str, **options: Any) -> Any:
    """The ``transformers`` config an ``hf:<arch>`` spec builds: the small defaults overridden by ``options``."""
    check_backends(options, f"'{target}'")
    arch = hf_arch(target)
    config_cls = _transformers().CONFIG_MAPPING[arch.model_type]
    check_config_fields(config_cls, options, f"'{target}'")
    aliases = getattr(config_cls, "attribute_map", {})
    values = dict(arch.defaults)
    for key, value in options.items():  # an alias (hidden_size for GPT-2's n_embd) replaces the field it names
        values.pop(aliases.get(key, key), None)
        values[key] = value
    try:
        return config_cls(**values)
    except Exception as error:  # transformers' own checks (ValueError, huggingface_hub's strict-dataclass errors)
        raise ModelSpecError(f"'{target}' with {options} is not a valid {config_cls.__name__}: "
                             f"{config_error(error)}") from None


def check_config_fields(config_cls: type, options: Mapping[str, Any], where: str) -> None:
    """Refuse, with :class:`ModelSpecError` naming ``where``, ``options`` that are no field of the transformers
    config class ``config_cls`` (it would store them and build the model without them) and sizes that are not
    whole numbers ≥ 1."""
    known = config_cls()
    aliases = getattr(config_cls, "attribute_map", {})
    unknown = sorted(k for k in options if not hasattr(known, k) and k not in aliases)
    if unknown:
        fields = sorted(k for k in known.to_dict() if not k.startswith("_"))
        close = difflib.get_close_matches(unknown[0], [*fields, *aliases], n=3)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ModelSpecError(f"{where} has no config field {', '.join(unknown)}: {hint}{config_cls.__name__} "
                             f"fields include {', '.join(fields[:40])}")
    for key, value in options.items():
        if ({key, aliases.get(key)} & _SIZE_FIELDS and (isinstance(value, bool) or not isinstance(value, int)
                                                       or value < 1)):
            raise ModelSpecError(f"{where}: {key}={value!r} is not a size: use a whole number ≥ 1")


def config_error(error: Exception) -> str:
    """One line of a transformers config's own check (huggingface_hub's strict-dataclass errors span lines)."""
    return " ".join(line.strip() for line in str(error).splitlines()) or type(error).__name__


def hf_model(target: str, **options: Any) -> nn.Module:
    """Build ``hf:<arch>`` with random weights: options are config fields, plus ``task`` (the head: one of
    :data:`HF_TASKS`, default the architecture's usual one) and ``attn_implementation`` ("eager", "sdpa")."""
    arch = hf_arch(target)
    task = options.pop("task", arch.task)
    if task not in HF_TASKS:
        raise ModelSpecError(f"task '{task}' in '{target}' is not known: use one of {', '.join(HF_TASKS)}")
    build = {k: options.pop(k) for k in _FACTORY_OPTIONS[1:] if k in options}
    check_backends(build, f"'{target}'")  # the config fields are checked by hf_config
    config = hf_config(target, **options)
    auto = getattr(_transformers(), HF_TASKS[task])
    if getattr(config, "architectures", None) is None:  # transformers' auto classes iterate it (DeiT's two heads)
        config.architectures = []

    def built() -> nn.Module:
        try:
            return auto.from_config(config, **build)
        except ValueError as error:
            raise ModelSpecError(f"'{target}' has no '{task}' head ({error}): choose another task") from None
        except Exception as error:  # the model's own code cannot take these sizes (e.g. heads that do not divide)
            raise ModelSpecError(f"'{target}' with {options} does not build ({type(error).__name__}: {error}): check "
                                 "the sizes (hidden_size a multiple of num_attention_heads, ...)") from None

    # sizes from a spec, a recipe or a container's header: refused on the meta device before anything is allocated
    return within_memory(built, f"'{target}' with {options}")


def _read_folder_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ModelSpecError(f"'{folder}' is a folder without config.json: give a folder written by save_pretrained")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelSpecError(f"'{path}' is not valid JSON ({error}): re-save the model with save_pretrained") from None
    if not isinstance(config, dict):
        raise ModelSpecError(f"'{path}' does not hold a JSON object: re-save the model with save_pretrained")
    return config


def check_pretrained_folder(folder: str | Path) -> dict[str, Any]:
    """Refuse, before importing anything, a folder that would need custom code or pickled weights; return its
    config. A folder is loadable when its config names a ``model_type`` and class built into transformers and its
    weights are safetensors."""
    folder = Path(folder)
    config = _read_folder_config(folder)
    if "auto_map" in config or any(folder.glob("*.py")):
        names = ", ".join(sorted(config.get("auto_map", {}))) or "Python files in the folder"
        raise ModelSpecError(
            f"'{folder}' asks for custom code ({names}): slimkit never runs code from a model folder "
            "(trust_remote_code=False). Use a model whose architecture is built into transformers")
    if not isinstance(config.get("model_type"), str):
        raise ModelSpecError(f"'{folder / 'config.json'}' has no model_type: re-save the model with save_pretrained")
    check_backends(config, f"'{folder / 'config.json'}'")
    has_safetensors = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    if not has_safetensors:
        pickled = sorted(p.name for p in folder.glob("*.bin")) or sorted(p.name for p in folder.glob("*.pt*"))
        found = f" (it has {', '.join(pickled)}: pickled weights, which slimkit does not load)" if pickled else ""
        raise ModelSpecError(f"'{folder}' has no model.safetensors{found}: save it with "
                             "save_pretrained(..., safe_serialization=True)")
    return config


def _folder_class(config: dict[str, Any], folder: Path) -> type:
    transformers = _transformers()
    if config["model_type"] not in transformers.CONFIG_MAPPING:
        raise ModelSpecError(f"'{folder}' has model_type '{config['model_type']}', which this transformers "
                             f"({transformers.__version__}) does not know: upgrade transformers")
    architectures = config.get("architectures") or []
    if not architectures:
        return transformers.AutoModel
    if not isinstance(architectures, list):
        raise ModelSpecError(f"'{folder / 'config.json'}' has architectures = {architectures!r}, not a list of class "
                             "names: re-save the model with save_pretrained")
    name = architectures[0]
    cls = getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ModelSpecError(f"'{folder}' names the class {name!r}, which is not a transformers model class: "
                             "only architectures built into transformers are loaded")
    return cls


def load_pretrained(folder: str | Path, **options: Any) -> nn.Module:
    """Load a local ``save_pretrained`` folder as its own transformers class, offline, from safetensors, with
    ``trust_remote_code=False`` (see :func:`check_pretrained_folder`). ``attn_implementation`` is the only option."""
    folder = Path(folder)
    extra = sorted(set(options) - {"attn_implementation"})
    if extra:
        raise ModelSpecError(f"a model folder takes no option {', '.join(extra)} (only attn_implementation): "
                             "change the config with save_pretrained instead")
    check_backends(options, f"the options for '{folder}'")
    config = check_pretrained_folder(folder)
    cls = _folder_class(config, folder)
    transformers = _transformers()
    try:
        hf_config_obj = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=False,
                                                                local_files_only=True)
    except Exception as error:  # transformers' own checks of the fields (ValueError, strict-dataclass errors, ...)
        raise ModelSpecError(f"'{folder / 'config.json'}' is not a valid config: {config_error(error)}") from None
    # sizes from the folder's config: refused on the meta device before from_pretrained allocates them
    try:
        check_fits_memory(lambda: cls._from_config(hf_config_obj) if cls is not transformers.AutoModel
                          else transformers.AutoModel.from_config(hf_config_obj), f"'{folder}'")
    except ModelSpecError:
        raise
    except Exception as error:  # the model's own code cannot take these sizes (e.g. a negative vocabulary)
        raise ModelSpecError(f"'{folder}' cannot be built from its config ({type(error).__name__}: {error}): "
                             "re-save the model with save_pretrained") from None
    kwargs = {"config": hf_config_obj, "use_safetensors": True, "local_files_only": True, **options}
    if hasattr(transformers.PreTrainedModel, "set_use_kernels"):  # transformers ≥ 5 swaps in Hub kernels by default
        kwargs["use_kernels"] = False
    if cls is transformers.AutoModel:
        kwargs["trust_remote_code"] = False
    try:
        return cls.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelSpecError(f"loading '{folder}' as {cls.__name__} failed: {error}") from None


def is_pretrained_folder(target: str) -> bool:
    """True when ``target`` is an existing folder with a ``config.json`` (a save_pretrained folder)."""
    path = Path(target)
    return path.is_dir() and (path / "config.json").is_file()


def config_input(config: Any) -> tuple[str, tuple[int, ...], int | None]:
    """``(kind, per-sample shape, vocab)`` a transformers config's model takes by default: token ids (32 of them,
    capped by the position table) or ``num_channels × image_size × image_size`` pixels."""
    get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
    if get("image_size") is not None and get("num_channels") is not None:
        size = get("image_size")
        size = size if isinstance(size, int) else int(size[0])
        return "image", (int(get("num_channels")), size, size), None
    positions = get("max_position_embeddings") or get("n_positions") or 32
    return "tokens", (min(32, int(positions)),), get("vocab_size")
