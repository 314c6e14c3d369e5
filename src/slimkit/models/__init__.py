"""Model architectures by name: reference models and the compact zoo.

``create("lenet5")``, ``names("resnet*")``, ``from_spec("path/to/file.py:factory")``. Every private module in this
package (``_lenet.py``, ``_mobilenet.py``, ...) registers its models when ``slimkit.models`` is imported, so a new
architecture file is available by name, and tested over the registry, the day it is added.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from slimkit.models._lenet import MLP, LeNet5
from slimkit.models._registry import (
    MODELS,
    check_fits,
    class_count_option,
    create,
    default_input_shape,
    from_spec,
    is_code_spec,
    names,
    names_for_input,
    parse_spec,
    register_model,
    spec_input_shape,
)
from slimkit.models._resnet_cifar import BasicBlock, ChannelPadShortcut, CifarResNet

for _info in _pkgutil.iter_modules(__path__):
    if _info.name.startswith("_") and _info.name != "_registry":
        _importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "MLP",
    "MODELS",
    "BasicBlock",
    "ChannelPadShortcut",
    "CifarResNet",
    "LeNet5",
    "check_fits",
    "class_count_option",
    "create",
    "default_input_shape",
    "from_spec",
    "is_code_spec",
    "names",
    "names_for_input",
    "parse_spec",
    "register_model",
    "spec_input_shape",
]
