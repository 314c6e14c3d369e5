"""What ``slimkit auto`` must reach: a budget of latency, file size and MACs, each a ratio to the input model.

``Budget(latency=0.4)`` asks for a model whose ONNX Runtime latency (at ``batch`` and ``threads``) is at most 0.4 of
the input model's, measured in the same run; ``size=0.05`` for a deployed file (fp32 ONNX, int8 QDQ ONNX or the
Huffman-coded container, whichever the chosen mix deploys as) of at most 5 % of the input model's fp32 ONNX file;
``macs=0.5`` for at most half the multiply-accumulates per sample. Any combination may be given; every one is
checked on the final model by measurement.

:func:`parse_budget` reads the command-line form ``latency=0.4,size=0.05``. Every mistake (an unknown key, a ratio
of 2, 0 or NaN, a key given twice) is a :class:`~slimkit.ConfigError` naming the key and the fix, raised before any
work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from slimkit._errors import ConfigError

#: budget key → what it limits (the words the errors and the report use)
KEYS = {
    "latency": "ONNX Runtime latency / the input model's, measured interleaved in the same run",
    "size": "bytes of the deployed file / the input model's fp32 ONNX file",
    "macs": "multiply-accumulates per sample / the input model's",
}
#: settings of a latency budget that may appear beside the ratios in the command-line form
SETTINGS = ("batch", "threads")


def _ratio(key: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"budget {key}={value!r} is not a number: give {key} as a ratio to the input model's in "
                          f"(0, 1], e.g. {key}=0.5")
    value = float(value)
    if not math.isfinite(value) or not 0 < value <= 1:
        hint = "a budget above 1 allows a larger model than the input: " if math.isfinite(value) and value > 1 else ""
        raise ConfigError(f"budget {key}={value:g} is out of range: {hint}give {key} as a ratio to the input "
                          f"model's in (0, 1], e.g. {key}=0.5 for half")
    return value


@dataclass(frozen=True)
class Budget:
    """The limits the compressed model must meet, each a ratio to the input model's (None: no limit).

    latency: ONNX Runtime latency ratio at ``batch`` and ``threads`` (measured with
        :func:`slimkit.analysis.compare_latency`, whose A/A control must pass for the ratio to count).
    size: deployed file bytes / the input model's fp32 ONNX file bytes.
    macs: MACs per sample / the input model's (:func:`slimkit.analysis.profile`).
    batch, threads: the deployment a latency budget is for (batch size and ONNX Runtime threads per session).
    """

    latency: float | None = None
    size: float | None = None
    macs: float | None = None
    batch: int = 1
    threads: int = 1

    def __post_init__(self) -> None:
        for key in KEYS:
            object.__setattr__(self, key, _ratio(key, getattr(self, key)))
        if all(getattr(self, key) is None for key in KEYS):
            raise ConfigError("the budget is empty: give at least one of latency, size, macs (e.g. latency=0.5)")
        for key, high in (("batch", 4096), ("threads", 256)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise ConfigError(f"budget {key}={value!r}: use a whole number in [1, {high}]")

    def items(self) -> list[tuple[str, float]]:
        """The limits given, as (key, ratio) in the order latency, size, macs."""
        return [(key, getattr(self, key)) for key in KEYS if getattr(self, key) is not None]

    def text(self) -> str:
        """The command-line form: ``latency=0.4,size=0.05`` (with ``batch``/``threads`` when a latency is set and
        they are not 1)."""
        parts = [f"{key}={value:g}" for key, value in self.items()]
        if self.latency is not None:
            parts += [f"{key}={getattr(self, key)}" for key in SETTINGS if getattr(self, key) != 1]
        return ",".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def parse_budget(text: str | Budget | dict[str, Any], *, batch: int | None = None,
                 threads: int | None = None) -> Budget:
    """A :class:`Budget` from ``"latency=0.4,size=0.05"`` (also ``batch=64``, ``threads=2``), a mapping with the
    same keys, or a Budget. ``batch`` / ``threads`` given here apply when the text does not set them."""
    if isinstance(text, Budget):
        return text
    if isinstance(text, dict):
        values = dict(text)
    else:
        if not isinstance(text, str) or not text.strip():
            raise ConfigError("the budget is empty: give at least one of latency, size, macs (e.g. latency=0.5)")
        values = {}
        for part in text.replace(" ", "").split(","):
            if not part:
                continue
            key, sep, raw = part.partition("=")
            if not sep or not raw:
                raise ConfigError(f"budget '{part}' is not key=value: write e.g. latency=0.4,size=0.05")
            if key in values:
                raise ConfigError(f"budget key '{key}' is given twice: give each of latency, size, macs once")
            try:
                values[key] = int(raw) if key in SETTINGS and raw.isdigit() else float(raw)
            except ValueError:
                raise ConfigError(f"budget {key}={raw!r} is not a number: write e.g. {key}=0.5") from None
    unknown = [k for k in values if k not in KEYS and k not in SETTINGS]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], [*KEYS, *SETTINGS], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown budget key '{unknown[0]}'{hint}: use latency, size, macs (ratios to the input "
                          "model's), and batch, threads for a latency budget")
    for key, value in (("batch", batch), ("threads", threads)):
        if value is not None and key not in values:
            values[key] = value
    return Budget(**values)
