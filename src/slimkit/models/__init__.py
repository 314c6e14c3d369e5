"""Model architectures by name: reference models and the compact zoo.

``create("lenet5")``, ``names("resnet*")``, ``from_spec("path/to/file.py:factory")``, ``from_spec("hf:llama")``,
``from_spec("path/to/save_pretrained_folder")``; ``example_input(spec)`` gives pixels or token ids as the model
takes. Every private module in this package (``_lenet.py``, ``_mobilenet.py``, ...) registers its models when
``slimkit.models`` is imported, so a new architecture file is available by name, and tested over the registry, the
day it is added.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from slimkit.models._crelu import CReLU
from slimkit.models._hf import (
    HF_ARCHS,
    HF_TASKS,
    HFArch,
    check_backends,
    check_pretrained_folder,
    hf_config,
    hf_model,
    load_pretrained,
)
from slimkit.models._lenet import MLP, LeNet5
from slimkit.models._memory import buffer_bytes, check_input_memory, state_bytes, within_memory
from slimkit.models._registry import (
    MODELS,
    InputSpec,
    check_fits,
    class_count_option,
    create,
    default_input_shape,
    example_input,
    from_spec,
    input_spec,
    is_code_spec,
    names,
    names_for_input,
    parse_spec,
    register_model,
    spec_input_shape,
)
from slimkit.models._resnet_cifar import BasicBlock, ChannelPadShortcut, CifarResNet
from slimkit.models._shufflenet import ChannelShuffle

for _info in _pkgutil.iter_modules(__path__):
    if _info.name.startswith("_") and _info.name != "_registry":
        _importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "HF_ARCHS",
    "HF_TASKS",
    "MLP",
    "MODELS",
    "BasicBlock",
    "CReLU",
    "ChannelPadShortcut",
    "ChannelShuffle",
    "CifarResNet",
    "HFArch",
    "InputSpec",
    "LeNet5",
    "buffer_bytes",
    "check_backends",
    "check_fits",
    "check_input_memory",
    "check_pretrained_folder",
    "class_count_option",
    "create",
    "default_input_shape",
    "example_input",
    "from_spec",
    "hf_config",
    "hf_model",
    "input_spec",
    "is_code_spec",
    "load_pretrained",
    "names",
    "names_for_input",
    "parse_spec",
    "register_model",
    "spec_input_shape",
    "state_bytes",
    "within_memory",
]
