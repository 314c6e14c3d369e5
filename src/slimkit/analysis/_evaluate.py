"""Evaluation on a data loader: top-1 accuracy, error count and mean loss, or mIoU for segmentation."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from slimkit._errors import ConfigError, DataError


@dataclass(frozen=True)
class EvalResult:
    """``accuracy`` is top-1 for classification and pixel accuracy for segmentation; ``miou`` only for the latter."""

    accuracy: float
    errors: int
    loss: float
    samples: int
    miou: float | None = None

    @property
    def error_rate(self) -> float:
        return 1.0 - self.accuracy

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    keep = target != ignore_index
    index = target[keep] * num_classes + pred[keep]
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def miou_from_confusion(confusion: torch.Tensor) -> float:
    """Mean intersection-over-union over the classes that occur in the targets or the predictions."""
    confusion = confusion.double()
    intersection = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    return float((intersection[present] / union[present]).mean()) if present.any() else 0.0


def evaluate(
    model: nn.Module,
    loader: Iterable,
    metric: str = "accuracy",
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    num_classes: int | None = None,
    ignore_index: int = 255,
    device: str | torch.device = "cpu",
) -> EvalResult:
    """Run ``model`` over ``loader`` (batches of ``(inputs, targets)``) in eval mode and score it.

    ``metric="accuracy"``: top-1 over logits ``N×C``. ``metric="miou"``: per-pixel logits ``N×C×H×W`` against
    integer masks ``N×H×W``; mIoU over ``num_classes`` (default: the logits' C). The model's mode is restored.
    """
    if metric not in {"accuracy", "miou"}:
        raise ConfigError(f"unknown metric '{metric}': use 'accuracy' or 'miou'")
    loss_fn = loss_fn or nn.functional.cross_entropy
    was_training = model.training
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    confusion: torch.Tensor | None = None
    try:
        with torch.no_grad():
            for inputs, targets in loader:
                inputs, targets = inputs.to(device), targets.to(device)
                logits = model(inputs)
                if metric == "miou":
                    loss = nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
                    classes = num_classes or logits.shape[1]
                    pred = logits.argmax(1)
                    batch_conf = _confusion(pred.flatten(), targets.flatten(), classes, ignore_index)
                    confusion = batch_conf if confusion is None else confusion + batch_conf
                    valid = targets != ignore_index
                    correct += int(((pred == targets) & valid).sum())
                    total += int(valid.sum())
                    loss_sum += float(loss)
                else:
                    loss_sum += float(loss_fn(logits, targets)) * targets.shape[0]
                    correct += int((logits.argmax(1) == targets).sum())
                    total += targets.shape[0]
    finally:
        model.train(was_training)
    if total == 0:
        raise DataError("evaluate got an empty loader: check the dataset split and batch size")
    return EvalResult(
        accuracy=correct / total,
        errors=total - correct,
        loss=loss_sum / total,
        samples=total,
        miou=miou_from_confusion(confusion) if confusion is not None else None,
    )
