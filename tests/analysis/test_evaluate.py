import math

import pytest
import torch
from torch import nn

from slimkit import ConfigError, DataError
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


class FixedOutput(nn.Module):
    """Returns a Hugging Face-style output object carrying fixed per-position logits."""

    def __init__(self, logits):
        super().__init__()
        self.fixed = logits

    def forward(self, input_ids):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.fixed[: input_ids.shape[0]])


def test_language_model_perplexity_is_exp_of_mean_token_cross_entropy_skipping_padding():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 7)
    targets = torch.tensor([[1, 2, 3, 4], [0, 6, 5, 1], [2, 2, -100, -100]])
    batches = [(torch.zeros(2, 4, dtype=torch.long), targets[:2]), (torch.zeros(1, 4, dtype=torch.long), targets[2:])]
    model = FixedOutput(logits)
    result = evaluate(model, [(batches[0][0], batches[0][1])])  # first batch only: positions (0..1, 0..3)
    log_p = logits[:2].log_softmax(-1)
    by_hand = -sum(float(log_p[n, t, targets[n, t]]) for n in range(2) for t in range(4)) / 8
    assert result.loss == pytest.approx(by_hand, rel=1e-6) and result.samples == 8
    assert result.perplexity == pytest.approx(math.exp(by_hand), rel=1e-6)

    class Shifted(nn.Module):  # the second batch is the third sequence: its logits are logits[2]
        def forward(self, input_ids):
            return logits[:2] if input_ids.shape[0] == 2 else logits[2:]

    result = evaluate(Shifted(), batches, metric="perplexity")
    log_p = logits.log_softmax(-1)
    scored = [(n, t) for n in range(3) for t in range(4) if targets[n, t] != -100]
    by_hand = -sum(float(log_p[n, t, targets[n, t]]) for n, t in scored) / len(scored)
    correct = sum(int(logits[n, t].argmax() == targets[n, t]) for n, t in scored)
    assert result.samples == 10 and result.loss == pytest.approx(by_hand, rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(by_hand), rel=1e-6)
    assert result.accuracy == pytest.approx(correct / 10) and result.errors == 10 - correct
    with pytest.raises(ConfigError, match="perplexity needs per-position logits"):
        evaluate(Fixed(torch.randn(4, 2)), [(torch.zeros(4, 1), torch.tensor([0, 1, 1, 0]))], metric="perplexity")
