import pytest
import torch

from slimkit import ConfigError, models
from slimkit.analysis import evaluate
from slimkit.data import TensorLoader, create_data, mnist_tensors
from slimkit.data._segmentation import IGNORE_INDEX, make_segmentation_canvases


@pytest.fixture(scope="module")
def digits():
    images, labels = mnist_tensors("test")
    return images[:200], labels[:200]


def test_canvases_are_deterministic_by_seed(digits):
    a = make_segmentation_canvases(*digits, 6, seed=3)
    b = make_segmentation_canvases(*digits, 6, seed=3)
    c = make_segmentation_canvases(*digits, 6, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (6, 1, 64, 64) and a[1].shape == (6, 64, 64) and a[1].dtype == torch.long


def test_labels_are_background_digit_classes_or_ignore(digits):
    inputs, targets = make_segmentation_canvases(*digits, 20, canvas=48, digits=(1, 3), seed=0)
    values = set(targets.unique().tolist())
    assert values <= set(range(11)) | {IGNORE_INDEX} and len(values & set(range(1, 11))) >= 3
    assert (targets[inputs[:, 0] == 0] == 0).all()  # empty pixels are background
    assert (targets[inputs[:, 0] > 0.5] != 0).all()  # stroke pixels belong to a digit class


def test_a_single_digit_is_labelled_with_its_class(digits):
    images, labels = digits
    inputs, targets = make_segmentation_canvases(images[:1], labels[:1], 1, canvas=28, digits=(1, 1), seed=0)
    torch.testing.assert_close(inputs[0], images[0])
    stroke = images[0, 0] > 0.5
    assert (targets[0][stroke] == labels[0] + 1).all()
    assert (targets[0][images[0, 0] == 0] == 0).all()


def test_bad_options_are_rejected(digits):
    with pytest.raises(ConfigError, match="canvas 20 is smaller"):
        make_segmentation_canvases(*digits, 1, canvas=20)
    with pytest.raises(ConfigError, match="min ≤ max"):
        make_segmentation_canvases(*digits, 1, digits=(3, 2))


def test_registered_dataset_and_miou_of_an_oracle():
    bundle = create_data("mnist-seg", train_size=40, test_size=20, seed=1)
    assert bundle.task == "segmentation" and bundle.num_classes == 11 and bundle.input_shape == (1, 64, 64)
    assert len(bundle.train.inputs) == 40 and len(bundle.test.inputs) == 20
    again = create_data("mnist-seg", train_size=40, test_size=20, seed=1)
    assert torch.equal(bundle.test.targets, again.test.targets)

    class Oracle(torch.nn.Module):  # looks up the true label map of each canvas: mIoU must be exactly 1
        def forward(self, x):
            index = (x.flatten(1)[:, None] == bundle.test.inputs.flatten(1)[None]).all(-1).float().argmax(1)
            labels = bundle.test.targets[index].clamp(max=10)
            return torch.nn.functional.one_hot(labels, 11).permute(0, 3, 1, 2).float()

    assert evaluate(Oracle(), bundle.test, metric="miou").miou == pytest.approx(1.0)
    segnet = models.create("mobile_segnet", width=0.25)
    result = evaluate(segnet, TensorLoader(bundle.test.inputs[:4], bundle.test.targets[:4], 4), metric="miou")
    assert 0.0 <= result.miou <= 1.0
