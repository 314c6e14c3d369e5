import pytest
import torch
from torch import nn

from slimkit import DataError
from slimkit.analysis import evaluate, miou_from_confusion


class Fixed(nn.Module):
    """Returns the logits it is told to, regardless of input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits[: x.shape[0]]


def test_accuracy_errors_and_loss():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0], [0.0, 5.0]])
    targets = torch.tensor([0, 1, 1, 1])
    result = evaluate(Fixed(logits), [(torch.zeros(4, 1), targets)])
    assert result.accuracy == 0.75 and result.errors == 1 and result.samples == 4
    assert result.loss == pytest.approx(float(nn.functional.cross_entropy(logits, targets)))


def test_miou_hand_computed():
    # 2 classes, 4 pixels: target [0,0,1,1], prediction [0,1,1,1]
    # class 0: I=1, U=2 → 0.5; class 1: I=2, U=3 → 2/3
    logits = torch.zeros(1, 2, 2, 2)
    pred = torch.tensor([[0, 1], [1, 1]])
    logits[0, 0][pred == 0] = 1
    logits[0, 1][pred == 1] = 1
    target = torch.tensor([[[0, 0], [1, 1]]])
    result = evaluate(Fixed(logits), [(torch.zeros(1, 1), target)], metric="miou")
    assert result.miou == pytest.approx((0.5 + 2 / 3) / 2)
    assert result.accuracy == pytest.approx(0.75)
    assert miou_from_confusion(torch.tensor([[1, 1], [0, 2]])) == pytest.approx((0.5 + 2 / 3) / 2)


def test_empty_loader_is_a_clear_error():
    with pytest.raises(DataError, match="empty"):
        evaluate(nn.Identity(), [])
