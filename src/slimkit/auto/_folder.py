"""The run folder of ``slimkit auto``: JSON files written atomically, read back on ``--resume``.

::

    OUT/auto.json                 the run: settings, fingerprint of model + data + settings, status, timings
    OUT/baseline.json             the input model measured (validation accuracy, MACs, deployed bytes per format)
    OUT/analysis/<knob>.json      per-layer sensitivities and costs of every knob (filled in as they are measured);
                                  latency*.json the fp32 / level-width / int8 latency tables,
                                  int8_float_latency.json each layer's cost of staying float in the int8 network
    OUT/probes/<plan digest>/     a plan's untrained architecture timed before training (latency budgets)
    OUT/candidates/NN/            one tried plan: plan.json, its stages' checkpoints, model.pt, the deployed file,
                                  result.json (written last: the candidate counts as finished once it exists)
    OUT/search.json               every solve of the search: budget targets, probes, back-offs, predictions
    OUT/candidates.json           every candidate's plan and measurements (the Pareto report's data)
    OUT/recipe.yaml               the chosen plan as an ordinary recipe (``slimkit compress`` reproduces it)
    OUT/model.pt, OUT/<deployed>  the chosen model's state dict and deployed file
    OUT/report.md, report.html    the Pareto report; plots/
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from slimkit._io import read_json_object, write_text_atomic

RUN_FILE = "auto.json"
#: every name the folder may hold (the listing above; the deployed file is model.onnx or model.slim)
OWNED = frozenset({RUN_FILE, "baseline.json", "analysis", "probes", "candidates", "search.json", "candidates.json",
                   "recipe.yaml", "model.pt", "model.onnx", "model.slim", "report.md", "report.html", "plots",
                   "verify.json"})


def write_json(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def file_digests(folder: Path, names: Any) -> dict[str, str | None]:
    """The SHA-256 of each named file in ``folder`` (None for one that is missing): what a resumed run checks
    before it reuses, and ships, the files a candidate wrote."""
    out: dict[str, str | None] = {}
    for name in names:
        path = folder / name
        out[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return out


def digest(payload: Any) -> str:
    """A short hash of a JSON-able value (sorted keys)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=_plain).encode()).hexdigest()[:16]


def state_digest(state: dict[str, Any]) -> str:
    """A hash of a state dict's names, shapes and values (identifies the input model's weights)."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            h.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
            h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()[:16]


def _shape(value: Any) -> Any:
    """The JSON type structure of ``value`` (numbers, strings, nulls, booleans; a dict's keys; a list's element
    shapes), which a cache entry read back must still have."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return ["list", *sorted({json.dumps(_shape(v), sort_keys=True) for v in value})]
    if isinstance(value, dict):
        return {str(k): _shape(v) for k, v in value.items()}
    return "other"


class Cache:
    """One JSON file of measured entries, rewritten (atomically) as entries are added, so an interrupted analysis
    resumes where it stopped. ``key`` identifies what the entries depend on; a file with another key is ignored.
    Each entry is kept with its type structure: one read back with another (a number become a string, a list a
    number) is measured again rather than handed to the search, where it would fail far from its file."""

    def __init__(self, path: Path | None, key: str) -> None:
        self.path, self.key = path, key
        self.entries: dict[str, Any] = {}
        loaded = read_json_object(path) if path is not None else None
        if isinstance(loaded, dict) and loaded.get("key") == key and isinstance(loaded.get("entries"), dict) \
                and isinstance(loaded.get("shapes"), dict):
            shapes = loaded["shapes"]
            self.entries = {name: value for name, value in loaded["entries"].items()
                            if name in shapes and _shape(value) == shapes[name]}

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def get(self, name: str) -> Any:
        return self.entries.get(name)

    def put(self, name: str, value: Any) -> None:
        self.entries[name] = value
        self.save()

    def save(self) -> None:
        if self.path is not None:
            # the shapes of the entries as JSON will give them back (numpy scalars as numbers, tuples as lists)
            plain = json.loads(json.dumps(self.entries, default=_plain))
            write_json(self.path, {"key": self.key, "entries": plain,
                                   "shapes": {name: _shape(value) for name, value in plain.items()}})
