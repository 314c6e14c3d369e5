import pytest
import torch
import torch.nn.functional as F

from slimkit import ConfigError
from slimkit.distill import LOSSES, ATLoss, DistillBatch, HintLoss, KDLoss, LossSpec, MimicLoss, attention_map


def test_kd_soft_part_is_zero_when_logits_match():
    logits = torch.randn(8, 10)
    targets = torch.randint(0, 10, (8,))
    assert KDLoss(T=20, alpha=1.0)(logits, logits.clone(), targets).abs().item() < 1e-6
    mixed = KDLoss(T=4, alpha=0.9)(logits, logits.clone(), targets)
    torch.testing.assert_close(mixed, 0.1 * F.cross_entropy(logits, targets), rtol=1e-5, atol=1e-6)


def test_kd_matches_hand_computed_t_squared_kl():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    T = 3.0
    p, q = F.softmax(t / T, 1), F.softmax(s / T, 1)
    expected = (p * (p.log() - q.log())).sum(1).mean() * T * T
    torch.testing.assert_close(KDLoss(T=T, alpha=1.0)(s, t), expected, rtol=1e-5, atol=1e-6)


def test_kd_gradient_scale_is_invariant_to_large_temperature():
    # Hinton et al. §2.1: for large T, dC/dz_i ≈ (z_i - v_i) / (N T²) with zero-mean logits; the T² factor cancels it.
    torch.manual_seed(0)
    s0, t = torch.randn(16, 10), torch.randn(16, 10)
    s0, t = s0 - s0.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    grads = {}
    for T in (50.0, 100.0, 200.0):
        s = s0.clone().requires_grad_(True)
        KDLoss(T=T, alpha=1.0)(s, t).backward()
        grads[T] = s.grad
    limit = (s0 - t) / (10 * 16)  # the large-T limit: (z - v)/N per sample, averaged over the batch of 16
    for g in grads.values():
        torch.testing.assert_close(g, limit, rtol=0.05, atol=1e-4)
    assert abs(grads[200.0].norm() / grads[50.0].norm() - 1) < 1e-2
    # without the T² factor the gradient would shrink by (200/50)² = 16
    s = s0.clone().requires_grad_(True)
    (KDLoss(T=200.0, alpha=1.0).soft_loss(s, t) / 200.0**2).backward()
    assert grads[200.0].norm() / s.grad.norm() == pytest.approx(200.0**2, rel=1e-4)


def test_attention_maps_are_unit_norm_and_invariant_to_channel_count():
    a = torch.randn(3, 8, 7, 7)
    maps = attention_map(a)
    assert maps.shape == (3, 49)
    torch.testing.assert_close(maps.norm(dim=1), torch.ones(3))
    # same activations repeated over 4× the channels: the same attention map
    torch.testing.assert_close(attention_map(a.repeat(1, 4, 1, 1)), maps, rtol=1e-5, atol=1e-6)
    # hand computation: mean_c a² then L2-normalise
    q = a.pow(2).mean(1).flatten(1)
    torch.testing.assert_close(maps, q / q.norm(dim=1, keepdim=True))


def test_at_loss_is_zero_for_matching_attention_with_different_channels_and_interpolates_space():
    a = torch.randn(2, 4, 8, 8)
    loss = ATLoss(beta=1000)
    assert loss([a], [a.repeat(1, 3, 1, 1)]).item() < 1e-6
    q_s, q_t = attention_map(a), attention_map(torch.randn(2, 16, 8, 8))
    expected = 500 * (q_s - q_t).pow(2).mean()
    t = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(loss([a], [t]), 500 * (attention_map(a) - attention_map(t)).pow(2).mean())
    assert expected.item() > 0
    # spatial mismatch: a 4×4 student map is resized to the teacher's 8×8
    value = loss([torch.randn(2, 4, 4, 4, requires_grad=True)], [t])
    assert value.item() > 0 and value.requires_grad


def test_hint_builds_regressors_from_shapes_and_trains_them():
    hint = HintLoss()
    hint.setup([("a", "b"), ("c", "d")], {"a": (4, 8, 8), "c": (12,)}, {"b": (16, 8, 8), "d": (20,)})
    assert [tuple(r.weight.shape) for r in hint.regressors] == [(16, 4, 1, 1), (20, 12)]
    s1, s2 = torch.randn(2, 4, 8, 8), torch.randn(2, 12)
    t1, t2 = torch.randn(2, 16, 8, 8), torch.randn(2, 20)
    value = hint([s1, s2], [t1, t2])
    expected = 0.5 * F.mse_loss(hint.regressors[0](s1), t1) + 0.5 * F.mse_loss(hint.regressors[1](s2), t2)
    torch.testing.assert_close(value, expected)
    value.backward()
    assert all(p.grad is not None for p in hint.parameters())


def test_mimic_refuses_mismatched_shapes_and_suggests_hint():
    with pytest.raises(ConfigError, match="use 'hint'"):
        MimicLoss().setup([("a", "b")], {"a": (8, 4, 4)}, {"b": (16, 4, 4)})
    m = MimicLoss()
    m.setup([("a", "b")], {"a": (3,)}, {"b": (3,)})
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    torch.testing.assert_close(m([s], [t]), ((s - t) ** 2).mean())


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_registered_loss_gives_a_differentiable_scalar(name):
    loss = LossSpec(name).build()
    s_logits = torch.randn(4, 10, requires_grad=True)
    s_feat = torch.randn(4, 6, 5, 5, requires_grad=True)
    t_feat = torch.randn(4, 6, 5, 5)
    loss.setup([("s", "t")] if loss.uses_features else [], {"s": (6, 5, 5)}, {"t": (6, 5, 5)})
    batch = DistillBatch(s_logits, torch.randint(0, 10, (4,)), torch.randn(4, 10), {"s": s_feat}, {"t": t_feat})
    value = loss.compute(batch)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert (s_feat.grad if loss.uses_features else s_logits.grad).abs().sum() > 0


def test_loss_spec_parsing_and_errors():
    spec = LossSpec.parse("kd:T=20,alpha=0.9,weight=2")
    assert (spec.name, spec.weight, spec.params) == ("kd", 2.0, {"T": 20, "alpha": 0.9})
    assert spec.build().T == 20.0
    with pytest.raises(ConfigError, match="no option gamma"):
        LossSpec.parse("kd:gamma=1").build()
    with pytest.raises(ConfigError, match="unknown distillation loss 'kdd'"):
        LossSpec.parse("kdd").build()
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        LossSpec.parse("kd:20")


@pytest.mark.parametrize("losses", [("kd", "kd"), ("kd", "kd:T=4"), ("kd:T=4", "kd:T=4.0"), ("at", "at:p=2")])
def test_one_loss_given_twice_is_refused_even_when_spelled_differently(losses):
    # kd's default T is 4 and at's default p is 2: each pair is one loss counted twice
    from slimkit.distill import DistillConfig

    with pytest.raises(ConfigError, match="given twice with the same options"):
        DistillConfig(losses=losses)
    DistillConfig(losses=("kd", "kd:T=8"))  # two temperatures are two losses
