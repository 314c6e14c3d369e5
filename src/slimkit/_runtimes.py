"""The runtimes slimkit times models in, by name: one registry that every option naming a runtime is checked against.

A latency comparison, a latency table and a latency target run in one of these; ``"onnxruntime"`` is slimkit's
deployment runtime (a core dependency), ``"openvino"`` OpenVINO's CPU runtime (optional: ``pip install openvino``).
This module imports neither, so a command line can list and check them without loading either.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from slimkit._errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    """``name`` as options spell it, ``display`` as reports print it, ``package`` the module that provides it and
    ``extra`` slimkit's install extra that brings it (empty: a core dependency)."""

    name: str
    display: str
    package: str
    extra: str = ""


RUNTIMES: dict[str, Runtime] = {
    "onnxruntime": Runtime("onnxruntime", "ONNX Runtime", "onnxruntime"),
    "openvino": Runtime("openvino", "OpenVINO (CPU)", "openvino", extra="openvino"),
}
#: the runtime when none is named
DEFAULT_RUNTIME = "onnxruntime"


def runtime(name: object, what: str = "runtime") -> Runtime:
    """The runtime called ``name``, or a :class:`ConfigError` listing the known ones (``what``: the option's name)."""
    if not isinstance(name, str) or name not in RUNTIMES:
        raise ConfigError(f"{what}={name!r}: use one of {', '.join(repr(n) for n in RUNTIMES)}")
    return RUNTIMES[name]


def require_runtime(name: str, what: str = "runtime") -> Runtime:
    """:func:`runtime`, and a :class:`ConfigError` saying how to install it when its package is missing (checked
    without importing it)."""
    found = runtime(name, what)
    try:
        installed = importlib.util.find_spec(found.package) is not None
    except ValueError:  # a module object without a spec (e.g. set to None in sys.modules): not importable
        installed = False
    if not installed:
        raise ConfigError(f"{what} '{name}' needs the {found.package} package: pip install {found.package}"
                          + (f" (or pip install 'slimkit[{found.extra}]')" if found.extra else ""))
    return found
