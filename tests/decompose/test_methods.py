import numpy as np
import pytest
import torch
from torch import nn

from slimkit.analysis import profile
from slimkit.decompose import DECOMPOSITIONS

CONVS = {
    "plain": lambda: nn.Conv2d(6, 10, 3),
    "stride-pad": lambda: nn.Conv2d(8, 12, 3, stride=2, padding=1),
    "dilated-rect-nobias": lambda: nn.Conv2d(5, 7, (3, 5), padding=(2, 1), dilation=(2, 1), bias=False),
    "same": lambda: nn.Conv2d(4, 6, 3, padding="same"),
}


def _full(method_name: str, module: nn.Module) -> nn.Sequential:
    method = DECOMPOSITIONS.get(method_name)
    return method.build(module, method.full_ranks(module), seed=0)


@pytest.mark.parametrize("case", sorted(CONVS))
@pytest.mark.parametrize("method_name", ["svd", "tucker2"])
def test_full_rank_conv_decomposition_is_exact(method_name, case):
    conv = CONVS[case]()
    x = torch.randn(2, conv.in_channels, 13, 11)
    replacement = _full(method_name, conv)
    assert all(type(m) in (nn.Conv2d,) for m in replacement)
    torch.testing.assert_close(replacement(x), conv(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_full_rank_svd_of_linear_is_exact(bias):
    linear = nn.Linear(30, 20, bias=bias)
    replacement = _full("svd", linear)
    first, last = replacement
    assert first.bias is None and (last.bias is not None) == bias
    x = torch.randn(5, 30)
    torch.testing.assert_close(replacement(x), linear(x), atol=1e-5, rtol=0)


def test_tucker2_is_exact_at_the_true_multilinear_rank():
    # W = G ×₀ U_out ×₁ U_in with ranks (4, 3): Tucker-2 at (4, 3) must recover the layer exactly.
    g = torch.randn(4, 3, 3, 3)
    u_out, u_in = torch.randn(16, 4), torch.randn(8, 3)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    conv.weight.data = torch.einsum("abhw,oa,ib->oihw", g, u_out, u_in)
    replacement = DECOMPOSITIONS.get("tucker2").build(conv, (4, 3), seed=0)
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(replacement(x), conv(x), atol=1e-4, rtol=0)


def test_cp_error_shrinks_with_rank_and_is_exact_on_a_cp_tensor():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, padding=1)
    x = torch.randn(2, 8, 10, 10)
    errors = []
    with torch.no_grad():
        expected = conv(x)
        for rank in (2, 8, 32, 96):
            got = DECOMPOSITIONS.get("cp").build(conv, (rank,), seed=0)(x)
            errors.append(float((got - expected).norm() / (expected - conv.bias.view(1, -1, 1, 1)).norm()))
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.05
    # A kernel that is exactly a rank-3 CP tensor is recovered at rank 3.
    a, b, c, d = torch.randn(12, 3), torch.randn(8, 3), torch.randn(3, 3), torch.randn(3, 3)
    conv.weight.data = torch.einsum("or,ir,hr,wr->oihw", a, b, c, d)
    torch.testing.assert_close(DECOMPOSITIONS.get("cp").build(conv, (3,), seed=0)(x), conv(x), atol=1e-3, rtol=0)


def test_cp_keeps_stride_padding_and_dilation():
    a, b, c, d = torch.randn(6, 2), torch.randn(4, 2), torch.randn(3, 2), torch.randn(5, 2)
    conv = nn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    conv.weight.data = torch.einsum("or,ir,hr,wr->oihw", a, b, c, d)
    replacement = DECOMPOSITIONS.get("cp").build(conv, (2,), seed=0)
    x = torch.randn(1, 4, 12, 13)
    torch.testing.assert_close(replacement(x), conv(x), atol=1e-3, rtol=0)


def _profile_counts(module: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    total = profile(module, x).total
    return total.params, total.macs


def test_svd_linear_params_and_macs_equal_hand_counts():
    linear = nn.Linear(784, 300)
    replacement = DECOMPOSITIONS.get("svd").build(linear, (20,), seed=0)
    hand_params = 20 * (784 + 300) + 300
    assert DECOMPOSITIONS.get("svd").params(linear, (20,)) == hand_params
    assert _profile_counts(replacement, torch.randn(1, 784)) == (hand_params, 20 * 784 + 300 * 20)


def test_conv_params_and_macs_equal_hand_counts():
    conv = nn.Conv2d(20, 50, 5)  # LeNet-5 conv2 on a 12×12 map → 8×8
    x = torch.randn(1, 20, 12, 12)
    tucker = DECOMPOSITIONS.get("tucker2")
    params = 20 * 6 + 6 * 10 * 25 + 10 * 50 + 50
    assert tucker.params(conv, (10, 6)) == params
    macs = 144 * 20 * 6 + 64 * 6 * 10 * 25 + 64 * 10 * 50
    assert _profile_counts(tucker.build(conv, (10, 6), seed=0), x) == (params, macs)

    cp = DECOMPOSITIONS.get("cp")
    params = 8 * (20 + 5 + 5 + 50) + 50
    assert cp.params(conv, (8,)) == params
    # 1×1 on 12×12, vertical 5×1 depthwise → 8×12, horizontal 1×5 depthwise → 8×8, 1×1 out.
    macs = 144 * 20 * 8 + 96 * 8 * 5 + 64 * 8 * 5 + 64 * 8 * 50
    assert _profile_counts(cp.build(conv, (8,), seed=0), x) == (params, macs)

    svd = DECOMPOSITIONS.get("svd")
    params = 12 * (20 * 25 + 50) + 50
    assert svd.params(conv, (12,)) == params
    assert _profile_counts(svd.build(conv, (12,), seed=0), x) == (params, 64 * 12 * 500 + 64 * 50 * 12)


@pytest.mark.parametrize(("method_name", "module", "reason"), [
    ("tucker2", nn.Conv2d(8, 8, 3, groups=8), "groups=8"),
    ("cp", nn.Conv2d(8, 16, 3, groups=2), "groups=2"),
    ("svd", nn.Conv2d(8, 8, 3, groups=4), "groups=4"),
    ("tucker2", nn.Conv2d(8, 16, 1), "1×1 conv"),
    ("cp", nn.Conv2d(8, 16, 1), "1×1 conv"),
    ("tucker2", nn.Linear(4, 4), "not a Conv2d"),
    ("svd", nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), "padding_mode"),
])
def test_methods_say_why_they_do_not_apply(method_name, module, reason):
    assert reason in DECOMPOSITIONS.get(method_name).skip_reason(module)


def test_svd_handles_a_1x1_conv_exactly():
    conv = nn.Conv2d(16, 8, 1, stride=2)
    replacement = _full("svd", conv)
    x = torch.randn(2, 16, 7, 7)
    torch.testing.assert_close(replacement(x), conv(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method_name", DECOMPOSITIONS.names())
def test_every_method_counts_its_own_params(method_name):
    method = DECOMPOSITIONS.get(method_name)
    conv = nn.Conv2d(6, 9, 3)
    ranks = tuple(max(1, r // 2) for r in method.full_ranks(conv))
    replacement = method.build(conv, ranks, seed=0)
    assert sum(p.numel() for p in replacement.parameters()) == method.params(conv, ranks)
    assert len(method.matrices(conv)) in (len(ranks), 2)
    assert all(isinstance(m, np.ndarray) and m.ndim == 2 for m in method.matrices(conv))


def test_small_factorisations_run_on_one_blas_thread_and_large_ones_on_torchs_count():
    from threadpoolctl import threadpool_info

    from slimkit.decompose._methods import SMALL_FACTORISATION, limit_blas

    @limit_blas
    def blas_threads_seen(weight):
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    torch.set_num_threads(2)
    try:
        assert blas_threads_seen(nn.Conv2d(20, 50, 5)) == {1}
        assert blas_threads_seen(np.zeros(SMALL_FACTORISATION - 1)) == {1}
        assert blas_threads_seen(np.zeros((512, SMALL_FACTORISATION // 512))) == {2}
    finally:
        torch.set_num_threads(1)
