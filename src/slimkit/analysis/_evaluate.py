"""Evaluation on a data loader: top-1 accuracy, error count and mean loss, mIoU for segmentation, or mean token
cross-entropy and perplexity for language models."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimkit._errors import ConfigError, DataError

#: targets equal to this are not scored in token-level evaluation (PyTorch's and Hugging Face's convention)
LM_IGNORE_INDEX = -100


@dataclass(frozen=True)
class EvalResult:
    """``accuracy`` is top-1 for classification, pixel accuracy for segmentation and next-token top-1 for language
    models; ``miou`` only for segmentation. For language models ``loss`` is the mean cross-entropy per scored token
    (nats), ``samples`` the number of scored tokens and ``perplexity`` = exp(loss)."""

    accuracy: float
    errors: int
    loss: float
    samples: int
    miou: float | None = None
    perplexity: float | None = None

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


def output_logits(output: Any) -> torch.Tensor:
    """The logits of a model's output: the tensor itself, a Hugging Face ``ModelOutput``'s ``.logits``, or the first
    element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ConfigError(f"cannot find logits in a model output of type {type(output).__name__}: return a tensor, "
                      "a tuple starting with the logits, or an object with a .logits tensor")


def is_token_output(logits: torch.Tensor, targets: torch.Tensor) -> bool:
    """True for per-position logits ``N×L×V`` against token targets ``N×L`` (a language model's batch)."""
    return logits.dim() == 3 and targets.dim() == 2 and logits.shape[:2] == targets.shape


def token_cross_entropy(output: Any, targets: torch.Tensor, *, ignore_index: int = LM_IGNORE_INDEX,
                        reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of per-position logits ``N×L×V`` (or a ``ModelOutput``) against already-shifted
    targets ``N×L``, skipping ``ignore_index`` (padding). ``reduction="sum"`` gives the total in nats."""
    logits = output_logits(output)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=ignore_index, reduction=reduction)


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
    integer masks ``N×H×W``; mIoU over ``num_classes`` (default: the logits' C). Language models (per-position
    logits ``N×L×V``, or a Hugging Face output's ``.logits``, against shifted targets ``N×L``; ``metric`` "accuracy"
    or "perplexity") are scored per token, skipping targets of -100: ``loss`` is the mean token cross-entropy over
    every scored token of the loader, ``perplexity`` = exp(loss) (Jelinek et al. 1977), ``accuracy`` the next-token
    top-1. The model's mode is restored.
    """
    if metric not in {"accuracy", "miou", "perplexity"}:
        raise ConfigError(f"unknown metric '{metric}': use 'accuracy', 'miou' or 'perplexity'")
    loss_fn = loss_fn or nn.functional.cross_entropy
    was_training = model.training
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    confusion: torch.Tensor | None = None
    tokens = False
    try:
        with torch.no_grad():
            for inputs, targets in loader:
                inputs, targets = inputs.to(device), targets.to(device)
                logits = output_logits(model(inputs))
                if metric != "miou" and is_token_output(logits, targets):
                    tokens = True
                    scored = targets != LM_IGNORE_INDEX
                    loss_sum += float(token_cross_entropy(logits, targets, reduction="sum"))
                    correct += int(((logits.argmax(-1) == targets) & scored).sum())
                    total += int(scored.sum())
                elif metric == "perplexity":
                    raise ConfigError(f"perplexity needs per-position logits N×L×V and targets N×L, got logits "
                                      f"{tuple(logits.shape)} and targets {tuple(targets.shape)}")
                elif metric == "miou":
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
        perplexity=math.exp(min(loss_sum / total, 700.0)) if tokens else None,
    )
