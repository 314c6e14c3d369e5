import copy

import pytest
import torch
import torch.nn.functional as F

from slimkit import ConfigError, models
from slimkit.distill import DistillConfig, Distiller, HintLoss, KDLoss, MimicLoss, TaskLoss
from slimkit.prune import DepthPruneConfig, prune_depth

LLAMA = "hf:llama:hidden_size=32,intermediate_size=48,num_hidden_layers=4,num_attention_heads=4," \
        "num_key_value_heads=2,vocab_size=64"


def test_token_level_kd_equals_a_hand_computation_that_skips_padding():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    targets = torch.tensor([[1, 4, -100], [0, -100, -100]])
    T, alpha = 2.0, 0.75
    positions = [(0, 0), (0, 1), (1, 0)]
    kl = []
    for n, i in positions:
        p = F.softmax(t[n, i] / T, -1)
        q = F.softmax(s[n, i] / T, -1)
        kl.append(float((p * (p.log() - q.log())).sum()))
    ce = [-float(F.log_softmax(s[n, i], -1)[targets[n, i]]) for n, i in positions]
    expected = alpha * T * T * sum(kl) / 3 + (1 - alpha) * sum(ce) / 3
    assert float(KDLoss(T=T, alpha=alpha)(s, t, targets)) == pytest.approx(expected, rel=1e-5)
    assert float(TaskLoss()(s, targets)) == pytest.approx(sum(ce) / 3, rel=1e-5)
    # padding positions do not count: changing the logits there changes nothing
    s2 = s.clone()
    s2[0, 2] += 100
    s2[1, 1:] -= 50
    assert float(KDLoss(T=T, alpha=alpha)(s2, t, targets)) == pytest.approx(expected, rel=1e-5)


def test_sequence_mimic_and_hint_score_only_real_positions():
    s, t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    targets = torch.tensor([[1, 2, -100], [3, 4, 5]])
    keep = targets != -100
    expected = float(((s - t)[keep] ** 2).mean())
    assert float(MimicLoss()([s], [t], targets)) == pytest.approx(expected, rel=1e-6)
    hint = HintLoss()
    hint.setup([("a", "b")], {"a": (3, 4)}, {"b": (3, 6)})
    assert isinstance(hint.regressors[0], torch.nn.Linear) and hint.regressors[0].out_features == 6
    wide = torch.randn(2, 3, 6)
    mapped = hint.regressors[0](s).detach()
    assert float(hint([s], [wide], targets).detach()) == pytest.approx(0.5 * float(((mapped - wide)[keep] ** 2).mean()),
                                                             rel=1e-5)


def test_prune_then_distil_a_causal_lm_from_the_unpruned_model():
    torch.manual_seed(0)
    teacher = models.from_spec(LLAMA).eval()
    x = models.example_input(LLAMA, 8)
    data = [(x[i:i + 4], torch.roll(x[i:i + 4], -1, dims=1)) for i in (0, 4)]
    student = prune_depth(teacher, x, DepthPruneConfig(n_blocks=2, criterion="angular"))
    config = DistillConfig(losses=("kd:T=2,alpha=0.5", "mimic:weight=0.1"),
                           pairs=("model.layers.1=model.layers.3",), epochs=2, lr=3e-3, weight_decay=0.0,
                           optimizer="adamw", grad_clip=1.0)
    # an identical student: KD and mimic are zero, only the hard loss remains
    same_pairs = DistillConfig(**{**config.__dict__, "pairs": ("model.layers.3=model.layers.3",)})
    same = Distiller(teacher, copy.deepcopy(teacher), same_pairs)
    terms = same.loss_terms(*data[0])
    with torch.no_grad():
        hard = float(TaskLoss()(teacher(data[0][0]).logits, data[0][1]))
    assert terms["kd"] == pytest.approx(0.5 * hard, rel=1e-4)
    assert terms["mimic"] == pytest.approx(0.0, abs=1e-10)

    distiller = Distiller(teacher, student, config)
    before = distiller.loss_terms(*data[0])["total"]
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    distiller.fit(data)
    after = distiller.loss_terms(*data[0])["total"]
    assert after < before
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())
    assert type(distiller.student) is type(teacher) and distiller.student.config.num_hidden_layers == 2

    with pytest.raises(ConfigError, match="cache_teacher"):
        Distiller(teacher, student, DistillConfig(cache_teacher=True)).check(x[:2])
    with pytest.raises(ConfigError, match="optimizer 'adam'"):
        DistillConfig(optimizer="adam")
