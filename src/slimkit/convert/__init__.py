"""Rewrites of existing, trained layers into compact blocks, initialised to approximate the old layers.

``to_depthwise_separable`` (MobileNet), ``to_group_conv`` (ShuffleNet: group conv + channel shuffle) and ``to_crelu``
(Shang et al. 2016) each return a new model (``convert(model, x, config, data=...)`` dispatches on the config's
type); with ``data=`` calibration batches the new layers are refitted by least squares to the old layers' output
features, then :func:`fine_tune_` trains the result. (The width multiplier
applied to a trained model, fewer channels everywhere, is structured pruning: ``slimkit.prune.scale_width``.)
"""

from slimkit._select import select_names
from slimkit.convert._driver import (
    CONVERTERS,
    RewriteConfig,
    convert,
    converter_name,
    execution_order,
    layers_to_convert,
    register_converter,
)
from slimkit.convert._finetune import fine_tune_
from slimkit.convert._rewrites import (
    CReLUConfig,
    DepthwiseSeparableConfig,
    GroupConvConfig,
    to_crelu,
    to_depthwise_separable,
    to_group_conv,
)

__all__ = [
    "CONVERTERS",
    "CReLUConfig",
    "DepthwiseSeparableConfig",
    "GroupConvConfig",
    "RewriteConfig",
    "convert",
    "converter_name",
    "execution_order",
    "fine_tune_",
    "layers_to_convert",
    "register_converter",
    "select_names",
    "to_crelu",
    "to_depthwise_separable",
    "to_group_conv",
]
