"""A plan: one point of the search space (a deployment format and every layer's choice), and the recipe stages that
carry it out.

The stages are those of any slimkit recipe (``prune``, ``decompose``, ``distill`` / ``finetune``, ``quantize``,
``prune_unstructured``, ``cluster``, ``export``), so the plan the search picks is written as an ordinary recipe that
``slimkit compress`` runs; :mod:`slimkit.auto._apply` runs the same stages in-process, with the same seeds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: the distillation loss of the ``kd`` recovery (Hinton et al. 2015; T and α of the shipped prune + KD recipe)
KD_LOSS = "kd:T=4,alpha=0.9"
#: SGD settings of every recovery stage, written out so a recipe never depends on a stage's defaults
TRAIN_SETTINGS = {"momentum": 0.9, "weight_decay": 5e-4, "scheduler": "cosine"}
#: the file name of the container a container-format plan exports
CONTAINER_FILE = "model.slim"


@dataclass
class Plan:
    """What one candidate does to the input model.

    format: the deployment format (``onnx``, ``int8``, ``container``).
    prune: channel group → fraction of its units removed (only pruned groups).
    rank: layer → parameter ratio of its low-rank factorisation (only factorised layers).
    float_layers: in the int8 format, layers kept in float (mixed precision).
    sparsity / bits: in the container format, layer → magnitude-pruned fraction / bits per cluster index.
    predicted: the search's predictions (``latency``, ``size``, ``macs`` ratios and ``delta``, the summed
        sensitivity of the choices).
    """

    format: str
    prune: dict[str, float] = field(default_factory=dict)
    rank: dict[str, float] = field(default_factory=dict)
    float_layers: list[str] = field(default_factory=list)
    sparsity: dict[str, float] = field(default_factory=dict)
    bits: dict[str, int] = field(default_factory=dict)
    predicted: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Plan:
        return cls(**{k: payload[k] for k in cls.__dataclass_fields__ if k in payload})

    def key(self) -> str:
        """Identifies the choices (not the predictions): two plans with equal keys make the same model."""
        import json

        choices = {k: v for k, v in self.to_dict().items() if k != "predicted"}
        return json.dumps(choices, sort_keys=True)

    def summary(self) -> str:
        """A one-line description, e.g. ``int8: 3 groups pruned, 1 layer factorised, 1 float``."""
        parts = []
        if self.prune:
            parts.append(f"{len(self.prune)} group{'s' * (len(self.prune) != 1)} pruned "
                         f"({', '.join(f'{k} {v:.0%}' for k, v in self.prune.items())})")
        if self.rank:
            parts.append("factorised " + ", ".join(f"{k} (params ×{v:g})" for k, v in self.rank.items()))
        if self.float_layers:
            parts.append("float: " + ", ".join(self.float_layers))
        if self.sparsity or self.bits:
            layers = list(dict.fromkeys([*self.sparsity, *self.bits]))
            parts.append(", ".join(f"{n} {self.sparsity.get(n, 0):.0%}/{self.bits.get(n, '–')}b" for n in layers))
        if self.format == "int8":
            parts.append("every other layer int8" if self.float_layers else "every layer int8")
        return f"{self.format}: " + ("; ".join(parts) if parts else "unchanged")


def recovery_stage(recovery: str, epochs: int, lr: float) -> dict[str, Any]:
    """The recipe stage that recovers accuracy: KD from the input model, or fine-tuning."""
    if recovery == "kd":
        return {"distill": {"teacher": "input", "losses": [KD_LOSS], "epochs": epochs, "lr": lr,
                            "weight_decay": TRAIN_SETTINGS["weight_decay"], "scheduler": "cosine"}}
    return {"finetune": {"epochs": epochs, "lr": lr, **TRAIN_SETTINGS}}


def ratio_for_keep(units: int, keep: int) -> float:
    """The prune ratio that keeps exactly ``keep`` of ``units`` (``prune_channels`` removes ⌊units·ratio⌋)."""
    return (units - keep) / units
