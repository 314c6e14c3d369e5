import os
import pickle
import warnings

import pytest
import torch
from torch import nn

from slimkit import CheckpointError, ConfigError, UnsafeCheckpointError
from slimkit.data import TensorLoader, mnist_tensors
from slimkit.train import Callback, fit, load_checkpoint, load_weights_, save_checkpoint


class _Payload:
    """Unpickling it would create the file ``path`` (if anything ran the pickle's code)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _small_loader(n=2048, batch=128, seed=0):
    x, y = mnist_tensors("train")
    return TensorLoader(x[:n], y[:n], batch, shuffle=True, seed=seed)


def _model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10))


def test_loss_falls_on_real_mnist():
    result = fit(_model(), _small_loader(), epochs=3, progress=False,
                 optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]


class Crash(Callback):
    def on_epoch_end(self, state):
        if state.epoch == 1:
            raise KeyboardInterrupt


def test_resume_reaches_exactly_the_uninterrupted_weights(tmp_path):
    opt = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731
    straight = _model()
    fit(straight, _small_loader(), epochs=3, optimizer=opt, scheduler="cosine", progress=False, seed=3)

    interrupted = _model()
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, _small_loader(), epochs=3, optimizer=opt, scheduler="cosine", progress=False, seed=3,
            checkpoint_dir=tmp_path, callbacks=[Crash()])
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 0  # the crash came before epoch 2 was saved
    resumed = _model()
    result = fit(resumed, _small_loader(), epochs=3, optimizer=opt, scheduler="cosine", progress=False, seed=3,
                 checkpoint_dir=tmp_path, resume=True)
    assert result.resumed_from_epoch == 1 and len(result.history) == 3
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("field", "change"), [
    ("epoch", float("inf")), ("epoch", -10**9), ("epoch", 7), ("epoch", "1"),
    ("scheduler", {"optimizer": 0}), ("scheduler", {"base_lrs": "x"}),
    ("optimizer", {"param_groups": [{"lr": "x"}]}),
])
def test_a_tampered_epoch_checkpoint_is_refused_before_training(tmp_path, field, change):
    """An epoch checkpoint whose epoch is out of this fit's range, or whose optimizer / scheduler state has other
    fields or types (load_state_dict would take them; training would fail or misbehave later) is a
    CheckpointError at resume, before any step."""
    opt = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        fit(_model(), _small_loader(256), epochs=3, optimizer=opt, scheduler="cosine", progress=False,
            checkpoint_dir=tmp_path, callbacks=[Crash()])
    state = load_checkpoint(tmp_path / "last.pt")
    if field == "epoch":
        state["epoch"] = change
    elif field == "scheduler":
        state["scheduler"] = {**state["scheduler"], **change}
    else:
        groups = state["optimizer"]["param_groups"]
        state["optimizer"]["param_groups"] = [{**groups[0], **change["param_groups"][0]}, *groups[1:]]
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="cannot resume from"):
        fit(_model(), _small_loader(256), epochs=3, optimizer=opt, scheduler="cosine", progress=False,
            checkpoint_dir=tmp_path, resume=True)


def test_resume_takes_a_genuine_state_of_any_scheduler_and_refuses_another_length(tmp_path):
    """MultiStepLR keeps its milestones as a Counter keyed by ints: a genuine resume passes the form check; a
    checkpoint of a fit of another length (its schedule's total steps differ) is refused before training."""
    opt = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731
    steps = lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [1, 2])  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        fit(_model(), _small_loader(256), epochs=3, optimizer=opt, scheduler=steps, progress=False,
            checkpoint_dir=tmp_path, callbacks=[Crash()])
    result = fit(_model(), _small_loader(256), epochs=3, optimizer=opt, scheduler=steps, progress=False,
                 checkpoint_dir=tmp_path, resume=True)
    assert result.resumed_from_epoch == 1 and len(result.history) == 3
    with pytest.raises(CheckpointError, match="is not one of this fit's 5"):
        fit(_model(), _small_loader(256), epochs=5, optimizer=opt, scheduler=steps, progress=False,
            checkpoint_dir=tmp_path, resume=True)


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        torch.save({"model": Evil()}, handle, pickle_module=pickle)
    with pytest.raises(UnsafeCheckpointError, match="pickled Python objects"):
        load_checkpoint(path)
    # a bare pickle (not torch.save's zip) carrying a payload that would write a file: refused as unsafe, not
    # "damaged", with no warning of torch's leaking out, and the payload never ran
    marker = tmp_path / "ran"
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"w": _Payload(str(marker))}, protocol=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UnsafeCheckpointError, match="not a weights-only PyTorch file"):
            load_checkpoint(raw)
    assert not marker.exists()
    whole_model = tmp_path / "whole.pt"
    torch.save(_model(), whole_model)
    with pytest.raises(UnsafeCheckpointError):
        load_weights_(_model(), whole_model)


def test_a_torch_whose_weights_only_load_is_bypassable_loads_only_safetensors(tmp_path, monkeypatch):
    """Before PyTorch 2.6 a crafted .pt file runs code even through weights_only=True (CVE-2025-32434): there
    slimkit refuses .pt files with the fix named, and still reads safetensors."""
    from safetensors.torch import save_file

    from slimkit.train._checkpoint import weights_only_is_safe

    assert [weights_only_is_safe(v) for v in ("2.4.1", "2.5.1+cpu", "2.6.0", "2.13.0+cpu", "3.0")] == \
        [False, False, True, True, True]
    state = _model().state_dict()
    torch.save(state, tmp_path / "m.pt")
    save_file(state, str(tmp_path / "m.safetensors"))
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    with pytest.raises(UnsafeCheckpointError, match=r"CVE-2025-32434.*torch>=2\.6.*safetensors"):
        load_checkpoint(tmp_path / "m.pt")
    assert all(torch.equal(state[k], v) for k, v in load_checkpoint(tmp_path / "m.safetensors").items())


def test_weights_round_trip_and_mismatch(tmp_path):
    model = _model()
    save_checkpoint(model.state_dict(), tmp_path / "w.safetensors")
    save_checkpoint(model.state_dict(), tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        torch.manual_seed(99)
        other = load_weights_(nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Dropout(0.2),
                                            nn.Linear(64, 10)), tmp_path / name)
        assert torch.equal(other[1].weight, model[1].weight)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights_(nn.Linear(2, 2), tmp_path / "w.pt")


def test_bad_arguments_fail_before_training(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        fit(_model(), _small_loader(), epochs=1, resume=True)
    with pytest.raises(ConfigError, match="epochs"):
        fit(_model(), _small_loader(), epochs=-1)
