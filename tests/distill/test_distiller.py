import copy

import pytest
import torch
from torch import nn

from slimkit import ConfigError, models
from slimkit.data import TensorLoader, mnist_tensors, random_shift
from slimkit.distill import DistillConfig, Distiller, FeatureHooks, LossSpec, distill
from slimkit.train import load_checkpoint


def tiny_cnn(width: int = 8, classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(width * 16, classes),
    )


@pytest.fixture(scope="module")
def mnist_small():
    x, y = mnist_tensors("train")
    return x[:512], y[:512]


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_hooks_capture_the_named_layers():
    model = tiny_cnn()
    x = torch.randn(2, 1, 28, 28)
    with FeatureHooks(model, ["1", "4"]) as hooks:
        model(x)
        torch.testing.assert_close(hooks.features["1"], model[1](model[0](x)))
        assert hooks.features["4"].shape == (2, 8, 14, 14)
    assert _no_hooks(model)


def test_unknown_layer_lists_close_names():
    with pytest.raises(ConfigError, match=r"student \(CifarResNet\) has no layer named 'layer4'.*'layer1'"):
        Distiller(models.create("resnet20"), models.create("resnet20"),
                  DistillConfig(losses=("ce", "at"), pairs=("layer4=layer3",)))
    with pytest.raises(ConfigError, match=r"did you mean .*'layer1\.0\.conv1'"):
        Distiller(models.create("resnet20"), models.create("resnet20"),
                  DistillConfig(losses=("ce", "at"), pairs=("layer1.0.conv=layer1.0.conv1",)))


def test_class_count_mismatch_and_unmatched_shapes_fail_before_training(mnist_small):
    x, y = mnist_small
    loader = TensorLoader(x, y, 64)
    with pytest.raises(ConfigError, match="num_classes"):
        Distiller(tiny_cnn(classes=10), tiny_cnn(classes=5)).fit(loader)
    with pytest.raises(ConfigError, match="use 'hint'"):
        Distiller(tiny_cnn(16), tiny_cnn(8), DistillConfig(losses=("ce", "mimic"), pairs=("4=4",))).fit(loader)
    with pytest.raises(ConfigError, match="feature maps"):
        Distiller(tiny_cnn(16), tiny_cnn(8), DistillConfig(losses=("ce", "at"), pairs=("7=7",))).fit(loader)


def test_one_epoch_lowers_the_combined_loss_and_removes_hooks(mnist_small):
    x, y = mnist_small
    teacher, student = tiny_cnn(16), tiny_cnn(8)
    teacher_state = copy.deepcopy(teacher.state_dict())
    losses = ("kd:T=4,alpha=0.5", LossSpec("at", pairs=(("1", "1"), ("4", "4"))),
              LossSpec("hint", pairs=(("4", "4"), ("6", "6"))))
    config = DistillConfig(losses=losses, epochs=1, lr=0.05, scheduler=None)
    distiller = Distiller(teacher, student, config)
    before = distiller.loss_terms(x, y)
    distiller.fit(TensorLoader(x, y, 32, shuffle=True))
    after = distiller.loss_terms(x, y)
    assert after["total"] < 0.8 * before["total"]
    assert set(before) == {"kd", "at", "hint", "total"}
    assert _no_hooks(student) and _no_hooks(teacher)
    assert not teacher.training
    for k, v in teacher.state_dict().items():  # the teacher is frozen
        assert torch.equal(v, teacher_state[k]), k


def test_hint_regressors_are_trained_and_checkpointed(mnist_small, tmp_path):
    x, y = mnist_small
    distiller = Distiller(tiny_cnn(16), tiny_cnn(8), DistillConfig(
        losses=("ce", "hint"), pairs=("4=4",), epochs=1, checkpoint_dir=tmp_path))
    distiller.check(x[:2])
    regressor = distiller.net.losses[1].regressors[0]
    initial = regressor.weight.detach().clone()
    distiller.fit(TensorLoader(x, y, 64))
    assert not torch.equal(initial, regressor.weight)
    saved = load_checkpoint(tmp_path / "last.pt")["model"]
    torch.testing.assert_close(saved["losses.1.regressors.0.weight"], regressor.weight.detach())
    assert "student.0.weight" in saved


def test_teacher_cache_gives_the_same_training_with_one_teacher_pass(mnist_small):
    x, y = mnist_small
    teacher, student = tiny_cnn(16), tiny_cnn(8)
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    results = []
    for cache in (False, True):
        calls.clear()
        config = DistillConfig(losses=("kd:T=4,alpha=0.7",), epochs=2, cache_teacher=cache)
        trained = distill(teacher, student, TensorLoader(x, y, 64, shuffle=True), config)
        results.append((trained, sum(calls)))
    (plain, plain_calls), (cached, cached_calls) = results
    assert plain_calls == 2 * 512 + 2 and cached_calls == 512 + 2  # + check(): the teacher on 2 samples
    for (k, a), b in zip(plain.state_dict().items(), cached.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_cache_refuses_augmented_data_and_feature_losses(mnist_small):
    x, y = mnist_small
    with pytest.raises(ConfigError, match="augments"):
        Distiller(tiny_cnn(), tiny_cnn(), DistillConfig(cache_teacher=True)).fit(
            TensorLoader(x, y, 64, augment=random_shift(2)))
    with pytest.raises(ConfigError, match="features every batch"):
        Distiller(tiny_cnn(), tiny_cnn(), DistillConfig(losses=("ce", "at"), pairs=("4=4",), cache_teacher=True))


def test_distill_returns_a_new_student_and_leaves_the_argument_untouched(mnist_small):
    x, y = mnist_small
    student = tiny_cnn(8)
    state = copy.deepcopy(student.state_dict())
    trained = distill(tiny_cnn(16), student, TensorLoader(x[:128], y[:128], 64), DistillConfig(epochs=1))
    assert trained is not student
    assert all(torch.equal(v, state[k]) for k, v in student.state_dict().items())
    assert any(not torch.equal(v, state[k]) for k, v in trained.state_dict().items())


def test_weight_decay_reaches_the_optimizer(mnist_small):
    x, y = mnist_small
    teacher = tiny_cnn(16)
    norms = {}
    for weight_decay in (0.0, 0.05):
        torch.manual_seed(0)
        student = tiny_cnn(8)
        config = DistillConfig(losses=("kd",), epochs=1, lr=0.05, weight_decay=weight_decay, scheduler=None)
        Distiller(teacher, student, config).fit(TensorLoader(x, y, 32, shuffle=True))
        norms[weight_decay] = sum(float(p.detach().square().sum()) for p in student.parameters())
    assert norms[0.05] < 0.9 * norms[0.0], norms


@pytest.mark.parametrize(("options", "message"), [
    ({"lr": 0}, "lr=0: use a learning rate in (0, 10]"),
    ({"lr": float("nan")}, "lr=nan"),
    ({"weight_decay": -1e-4}, "weight_decay=-0.0001: use a value in [0, 1)"),
    ({"weight_decay": True}, "weight_decay=True"),
])
def test_bad_optimizer_values_fail_when_the_config_is_made(options, message):
    with pytest.raises(ConfigError) as info:
        DistillConfig(**options)
    assert message in str(info.value)


def test_distilling_an_unstructured_pruned_student_keeps_its_pruned_weights_at_zero():
    """A student carrying prune_unstructured's masks (Deep Compression's rounds) keeps exactly its zeros through
    distillation, as through fine-tuning; the distillation regrew 60 % of them before."""
    from slimkit.prune import attached_masks
    from slimkit.prune._unstructured import UnstructuredConfig, magnitude_prune

    torch.manual_seed(0)
    x, y = mnist_tensors("train")
    loader = TensorLoader(x[:512], y[:512], 128, shuffle=True, seed=0)
    student = magnitude_prune(models.create("lenet300"), None, UnstructuredConfig(sparsity=0.9))
    masks = {name: mask.clone() for name, mask in attached_masks(student).items()}
    out = distill(models.create("lenet300").eval(), student, loader,
                  DistillConfig(epochs=1, lr=0.05, losses=("kd",), progress=False))
    layers = dict(out.named_modules())
    for name, mask in masks.items():
        weight = layers[name].weight.detach()
        assert torch.equal(weight[~mask], torch.zeros_like(weight[~mask]))
        assert (weight[mask] != 0).float().mean() > 0.99  # the kept weights trained
