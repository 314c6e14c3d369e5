import copy

import pytest
import torch

from slimkit import ConfigError, models
from slimkit.data import TensorLoader, mnist_tensors
from slimkit.distill import ReconstructConfig, reconstruct, reconstruct_history, stage_parameters

STAGES = ("layer1=layer1", "layer2=layer2", "layer3=layer3")


def test_stage_parameters_follow_execution_order():
    net = models.create("resnet20")
    groups = stage_parameters(net, ["layer1", "layer2", "layer3"], torch.zeros(1, 1, 28, 28))
    assert groups[0][:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert all(n.startswith(("conv1", "bn1", "layer1.")) for n in groups[0])
    assert all(n.startswith("layer2.") for n in groups[1]) and all(n.startswith("layer3.") for n in groups[2])
    assert groups[3] == ["fc.weight", "fc.bias"]
    assert sum(map(len, groups)) == len(list(net.parameters()))
    with pytest.raises(ConfigError, match="forward order"):
        stage_parameters(net, ["layer2", "layer1"], torch.zeros(1, 1, 28, 28))


def test_stagewise_trains_one_stage_at_a_time_then_the_task(monkeypatch):
    x, y = mnist_tensors("train")
    loader = TensorLoader(x[:128], y[:128], 64, shuffle=True)
    torch.manual_seed(0)
    teacher = models.create("resnet20", width=0.5).eval()
    student = models.create("resnet20", width=0.25)
    snapshots = []
    import slimkit.distill._stagewise as stagewise

    original_fit = stagewise.Distiller.fit

    def recording_fit(self, loader, **kw):
        before = copy.deepcopy(self.student.state_dict())
        result = original_fit(self, loader, **kw)
        changed = {k for k, v in self.student.state_dict().items()
                   if v.dtype.is_floating_point and "running" not in k and not torch.equal(v, before[k])}
        snapshots.append((changed, [loss.loss_name for loss in self.losses]))
        return result

    monkeypatch.setattr(stagewise.Distiller, "fit", recording_fit)
    trained = reconstruct(teacher, student, loader, ReconstructConfig(stages=STAGES, stage_epochs=1))
    histories = reconstruct_history(trained)
    assert [names for _, names in snapshots] == [["hint"], ["hint"], ["hint"], ["ce"]]  # widths differ: hints
    changed = [c for c, _ in snapshots]
    assert changed[0] and all(k.startswith(("conv1", "bn1", "layer1.")) for k in changed[0])
    assert changed[1] and all(k.startswith("layer2.") for k in changed[1])
    assert changed[2] and all(k.startswith("layer3.") for k in changed[2])
    assert "fc.weight" in changed[3] and "conv1.weight" in changed[3]
    assert len(histories) == 4 and trained is not student
    assert all(p.requires_grad for p in trained.parameters())


@pytest.mark.slow
def test_stagewise_reconstruction_lowers_the_reconstruction_error():
    x, y = mnist_tensors("train")
    loader = TensorLoader(x[:1024], y[:1024], 64, shuffle=True)
    torch.manual_seed(0)
    teacher = models.create("resnet20").eval()
    student = models.create("resnet20")
    config = ReconstructConfig(stages=STAGES[:1], stage_epochs=3, epochs=0, lr=0.05)
    histories = reconstruct_history(reconstruct(teacher, student, loader, config))
    losses = [h["train_loss"] for h in histories[0].history]
    assert losses[-1] < 0.5 * losses[0]


def test_mimic_mode_trains_task_and_reconstruction_together():
    x, y = mnist_tensors("train")
    loader = TensorLoader(x[:128], y[:128], 64)
    teacher, student = models.create("resnet20", width=0.5).eval(), models.create("resnet20", width=0.5)
    trained = reconstruct(teacher, student, loader, ReconstructConfig(stages=STAGES, mode="mimic"))
    histories = reconstruct_history(trained)
    assert reconstruct_history(student) == []  # the caller's student is untouched
    assert len(histories) == 1 and histories[0].final["train_acc"] > 0
    with pytest.raises(ConfigError, match="use one of stagewise, mimic"):
        reconstruct(teacher, student, loader, ReconstructConfig(stages=STAGES, mode="joint"))


def test_a_feature_task_loss_without_its_own_pairs_is_refused_before_training():
    from slimkit.distill import LossSpec

    with pytest.raises(ConfigError, match="task loss 'hint' compares features"):
        ReconstructConfig(stages=STAGES, task_losses=("hint",))
    ReconstructConfig(stages=STAGES, task_losses=("kd:T=4", LossSpec("hint", pairs=(("layer3", "layer3"),))))
