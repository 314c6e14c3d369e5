"""Choosing layers by name: exact module names, shell globs (``layer1.*.conv?``) or ``re:`` regexes."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import Any

from slimkit._errors import ConfigError


def as_patterns(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """Normalise a layer option: None → all layers, a string → one pattern, a list → several."""
    if value is None:
        return ("*",)
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def is_literal(pattern: str) -> bool:
    """A pattern that names exactly one module (no glob characters, not a regex)."""
    return not pattern.startswith("re:") and not any(ch in pattern for ch in "*?[")


def matches(name: str, pattern: str) -> bool:
    """``re:<regex>`` is a full-match regex; anything else is a shell glob (a plain name matches itself)."""
    if pattern.startswith("re:"):
        try:
            return re.fullmatch(pattern[3:], name) is not None
        except re.error as error:
            raise ConfigError(f"layer pattern '{pattern}' is not a valid regex ({error}): fix the pattern") from None
    return fnmatch.fnmatchcase(name, pattern)


def matches_any(name: str, patterns: str | Sequence[str]) -> bool:
    """True when ``name`` matches one of ``patterns`` (see :func:`matches`)."""
    return any(matches(name, pattern) for pattern in as_patterns(patterns))


def weighted_layer_names(model: Any) -> list[str]:
    """The names of ``model``'s modules that hold parameters of their own: the layers a name option can mean."""
    return [name for name, module in model.named_modules()
            if name and any(True for _ in module.parameters(recurse=False))]


def check_names(candidates: Sequence[str], *options: str | Sequence[str] | None, kind: str = "selectable") -> None:
    """Every literal name in the layer options (``layers``, ``skip``) is one of ``candidates`` and every ``re:``
    pattern compiles: a typo is an error naming the choices, not an option that silently selects nothing."""
    for option in options:
        for pattern in () if option is None else as_patterns(option):
            if is_literal(pattern) and pattern not in candidates:
                shown = ", ".join(candidates[:40]) + (f", … ({len(candidates)} in all)" if len(candidates) > 40 else "")
                raise ConfigError(f"layer '{pattern}' is not a {kind} layer of this model: choose among "
                                  f"{shown or '(none)'}")
            if pattern.startswith("re:"):
                matches("", pattern)  # ConfigError for a regex that does not compile


def select_names(candidates: Sequence[str], layers: str | Sequence[str] | None,
                 skip: str | Sequence[str] | None = (), *, kind: str = "selectable") -> list[str]:
    """The ``candidates`` (in their order) matched by ``layers`` and not by ``skip``.

    A literal name in ``layers`` or ``skip`` that is not a candidate is an error (:func:`check_names`), so a typo
    does not silently convert (or keep) nothing.
    """
    include = as_patterns(layers)
    exclude = () if skip is None else as_patterns(skip) if skip else ()
    check_names(candidates, include, exclude, kind=kind)
    included = [name for name in candidates if any(matches(name, p) for p in include)]
    chosen = [name for name in included if not any(matches(name, p) for p in exclude)]
    if included and not chosen:
        selected = "every selectable layer" if include == ("*",) else f"every layer that layers={list(include)} selects"
        raise ConfigError(f"skip={list(exclude)} skips {selected} ({', '.join(included[:8])}"
                          f"{', …' if len(included) > 8 else ''}): nothing would change; skip fewer layers or select "
                          "others")
    return chosen
