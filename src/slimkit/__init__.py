"""slimkit: make trained PyTorch models small and fast for phones and edge CPUs.

Every technique lives in its own subpackage (``slimkit.prune``, ``slimkit.quantize``, ...) and is imported on
demand; ``import slimkit`` itself stays lean (no onnxruntime, matplotlib, tensorly, sklearn or pydantic).
"""

from slimkit._errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelSpecError,
    SlimkitError,
    TraceError,
    UnsafeCheckpointError,
)
from slimkit._finalize import finalize

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ModelSpecError",
    "SlimkitError",
    "TraceError",
    "UnsafeCheckpointError",
    "__version__",
    "finalize",
]
