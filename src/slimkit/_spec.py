"""Option strings shared by every registry a user can name: ``"name:key=value,key=value"``."""

from __future__ import annotations

import re
from typing import Any

_OPTION = re.compile(r"^([A-Za-z_]\w*)=(.+)$")


def parse_value(text: str) -> Any:
    """``"3"`` → 3, ``"0.5"`` → 0.5, ``"true"``/``"false"``/``"none"`` → True/False/None, else the text."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name:key=value,key=value"`` (or ``"file.py:factory:key=value"``) into target and options."""
    target, options = spec, {}
    head, sep, tail = spec.rpartition(":")
    if sep and tail and all(_OPTION.match(part) for part in tail.split(",")):
        target = head
        for part in tail.split(","):
            key, value = _OPTION.match(part).groups()
            options[key] = parse_value(value)
    return target, options
