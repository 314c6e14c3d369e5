import math

import pytest
import torch
from torch import nn

from slimkit import models
from slimkit.analysis import csr_bytes, profile, register_storage, storage_bytes


def test_lenet5_caffe_counts_match_hand_computation():
    prof = profile(models.create("lenet5"), torch.zeros(1, 1, 28, 28))
    # conv1 20·24·24·25 + conv2 50·8·8·(20·25) + fc1 800·500 + fc2 500·10
    assert prof.total.macs == 288_000 + 1_600_000 + 400_000 + 5_000 == 2_293_000
    assert prof.total.params == 431_080
    assert prof.row("conv1").output_shape == (1, 20, 24, 24)
    assert prof.total.bytes == 431_080 * 4


def test_lenet300_counts_match_hand_computation():
    prof = profile(models.create("lenet300"), torch.zeros(1, 1, 28, 28))
    assert prof.total.params == 266_610
    assert prof.total.macs == 784 * 300 + 300 * 100 + 100 * 10 == 266_200


@pytest.mark.parametrize(
    ("conv", "shape", "expected_macs"),
    [
        # out 8×(32+2·1−3)/2+1=16 → 16×16; per output (4/1)·9
        (nn.Conv2d(4, 8, 3, stride=2, padding=1), (1, 4, 32, 32), 8 * 16 * 16 * 4 * 9),
        # groups=2: per output (4/2)·9; dilation 2 → effective kernel 5: out 32−5+1=28
        (nn.Conv2d(4, 8, 3, groups=2, dilation=2), (1, 4, 32, 32), 8 * 28 * 28 * 2 * 9),
        # depthwise: per output 1·9
        (nn.Conv2d(8, 8, 3, padding=1, groups=8), (1, 8, 10, 10), 8 * 10 * 10 * 9),
        # Conv1d: out length 50−5+1=46
        (nn.Conv1d(3, 6, 5), (1, 3, 50), 6 * 46 * 3 * 5),
        # ConvTranspose2d: every input element times (C_out/groups)·k²: 4·7·7 · 3·9
        (nn.ConvTranspose2d(4, 3, 3, stride=2), (1, 4, 7, 7), 4 * 7 * 7 * 3 * 9),
    ],
)
def test_conv_macs_account_for_groups_dilation_stride_padding(conv, shape, expected_macs):
    prof = profile(nn.Sequential(conv), torch.zeros(shape))
    assert prof.total.macs == expected_macs


def test_macs_are_per_sample_whatever_the_batch():
    model = models.create("lenet5")
    assert profile(model, torch.zeros(8, 1, 28, 28)).total.macs == profile(model, torch.zeros(1, 1, 28, 28)).total.macs


def test_norms_pools_and_activations_are_other_ops_not_macs():
    model = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1))
    prof = profile(model, torch.zeros(1, 4, 8, 8))
    assert prof.total.macs == 0
    # BN 2/element (256 elements), ReLU 1/element, maxpool 4 taps × 64 outputs, adaptive pool reads 64 inputs
    assert prof.total.other_ops == 2 * 256 + 256 + 4 * 64 + 64


def test_functional_attention_matmuls_are_counted():
    class HandAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(16, 48)

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            att = (q @ k.transpose(-2, -1)).softmax(-1)
            return att @ v

    prof = profile(HandAttention(), torch.zeros(1, 5, 16))
    # qkv 5·48·16, QKᵀ 5·5·16, AV 5·16·5
    assert prof.total.macs == 5 * 48 * 16 + 5 * 5 * 16 + 5 * 16 * 5


def test_einsum_products_are_counted_with_ellipsis_and_broadcasting():
    class Einsums(nn.Module):
        def forward(self, x, y):
            scores = torch.einsum("b h i d, b h j d -> b h i j", x, y)  # spaces, as MaxViT writes them
            mixed = torch.einsum("...ij,...jd->...id", scores, y)
            return torch.einsum("bhid->bdhi", mixed)  # a permute: no MACs

    prof = profile(Einsums(), (torch.zeros(2, 3, 5, 4), torch.zeros(1, 3, 7, 4)))  # y broadcasts over the batch
    # per sample: QKᵀ 3·5·7·4, PV 3·5·4·7
    assert prof.total.macs == 3 * 5 * 7 * 4 + 3 * 5 * 4 * 7


@pytest.mark.parametrize(("equation", "shapes", "macs"), [
    ("...ij,...jk->...ik", [(3, 4, 5), (2, 3, 5, 6)], 2 * 3 * 4 * 5 * 6),  # fewer ellipsis dims first: right-aligned
    ("...ij,...jk->...ik", [(7, 4, 5), (2, 1, 5, 6)], 2 * 7 * 4 * 5 * 6),  # and broadcast
    ("B...I,B...J->B...IJ", [(1, 3, 4, 5), (1, 3, 4, 6)], 3 * 4 * 5 * 6),  # capitals next to an ellipsis
    ("bi,ij,jk->bk", [(1, 64), (64, 64), (64, 64)], 2 * 64 * 64),  # contracted pairwise, left to right
    ("bij,bjk", [(2, 3, 4), (2, 4, 5)], 2 * 3 * 4 * 5),  # implicit output
    ("ii->i", [(4, 4)], 0),  # one operand: a diagonal, no products
])
def test_einsum_macs_of_awkward_equations(equation, shapes, macs):
    from slimkit.analysis._einsum import einsum_macs

    operands = [torch.ones(*shape) for shape in shapes]
    torch.einsum(equation, *operands)  # the equation and shapes are valid for torch
    assert einsum_macs(equation, shapes) == macs


def test_multihead_attention_macs():
    mha = nn.MultiheadAttention(16, 4, batch_first=True)

    class Self(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    prof = profile(Self(), torch.zeros(2, 5, 16))
    # projections q,k,v,out: 4·5·16·16; attention: 2·5·5·16
    assert prof.total.macs == 4 * 5 * 16 * 16 + 2 * 5 * 5 * 16
    assert prof.total.params == 4 * 16 * 16 + 4 * 16


def test_shared_parameters_are_counted_once():
    shared = nn.Linear(10, 10)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    prof = profile(model, torch.zeros(1, 10))
    assert prof.total.params == 110
    assert prof.total.macs == 200


def test_sparse_storage_in_csr_and_custom_storage_hook():
    layer = nn.Linear(100, 10, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[:, :5] = 1.0
    # 50 non-zeros × (32 value + 32 index) bits + 11 row pointers × 32 bits
    assert csr_bytes(layer.weight, 32) == math.ceil((50 * 64 + 11 * 32) / 8)
    assert storage_bytes(layer, 32, "csr") == csr_bytes(layer.weight, 32)
    assert storage_bytes(layer, 32, "dense") == 4000
    prof = profile(nn.Sequential(layer), torch.zeros(1, 100), sparse_format="csr")
    assert prof.rows[0].sparsity == pytest.approx(0.95)

    class FourBit(nn.Linear):
        def slimkit_storage_bytes(self, dtype_bits: int) -> int:
            return math.ceil(self.weight.numel() * 4 / 8)

    assert storage_bytes(FourBit(100, 10, bias=False)) == 500

    class Packed(nn.Linear):
        pass

    register_storage(Packed)(lambda module, bits: 7)
    assert storage_bytes(Packed(3, 3)) == 7


def test_profile_restores_training_mode_and_reports_uncounted_leaves():
    class Odd(nn.Module):
        def forward(self, x):
            return x * 2

    model = nn.Sequential(nn.Linear(4, 4), Odd())
    model.train()
    prof = profile(model, torch.zeros(1, 4))
    assert model.training
    assert any("Odd" in u for u in prof.uncounted)
    assert prof.total.other_ops >= 4  # the functional multiply inside Odd is still counted


def test_profile_to_markdown_and_dict():
    prof = profile(models.create("lenet300"), torch.zeros(1, 1, 28, 28))
    assert "| **total** |" in prof.to_markdown()
    assert prof.to_dict()["total"]["macs"] == 266_200


def test_keyword_inputs_count_as_positional_ones():
    """A mapping of example inputs is keyword arguments (``input_ids=...``), as everywhere else in slimkit."""

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 4), nn.Linear(3, 4)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    model, x, y = TwoInputs(), torch.randn(5, 6), torch.randn(5, 3)
    by_keyword, by_position = profile(model, {"y": y, "x": x}), profile(model, (x, y))
    assert by_keyword.total.macs == by_position.total.macs == 6 * 4 + 3 * 4
    assert by_keyword.total.params == by_position.total.params
