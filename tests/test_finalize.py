"""``slimkit.finalize``: one verb makes a masked, clustered or QAT model final, by what the model carries."""

import pytest
import torch

import slimkit
from slimkit import models
from slimkit._finalize import FINALIZERS, finalizers_for
from slimkit.data import TensorLoader
from slimkit.prune import UnstructuredConfig, attached_masks, magnitude_prune
from slimkit.prune import finalize as finalize_masks
from slimkit.quantize import FakeQuantize, QuantConfig, convert_qat, quantize, quantize_qat
from slimkit.share import ClusterConfig, ClusteredLayer, cluster_weights, finalize_clusters

X = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _calibration():
    return TensorLoader(X, torch.zeros(4, dtype=torch.long), batch_size=2)


def _same(a, b):
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a(X), b(X))
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def test_every_family_registers_its_finalizer():
    assert FINALIZERS.names() == ["clusters", "masks", "qat"]


def test_masked_model_as_prune_finalize():
    masked = magnitude_prune(models.create("lenet5"), None, UnstructuredConfig(sparsity=0.6))
    assert finalizers_for(masked) == ["masks"]
    final = slimkit.finalize(masked)
    assert not attached_masks(final) and attached_masks(masked)  # the caller's model keeps its masks
    _same(final, finalize_masks(masked))


def test_clustered_model_as_finalize_clusters():
    clustered = cluster_weights(models.create("lenet5"), None, ClusterConfig(bits=3))
    assert finalizers_for(clustered) == ["clusters"]
    final = slimkit.finalize(clustered)
    assert not any(isinstance(m, ClusteredLayer) for m in final.modules())
    _same(final, finalize_clusters(clustered))


@pytest.mark.parametrize("lsq", [False, True])
def test_qat_model_as_convert_qat(lsq):
    qat = quantize_qat(models.create("lenet5").eval(), X[:1], QuantConfig(weight_bits=4, lsq=lsq), data=_calibration())
    assert finalizers_for(qat) == ["qat"]
    final = slimkit.finalize(qat)
    assert not any(isinstance(m, FakeQuantize) and (m.learnable or m.dynamic or m.observing)
                   for m in final.modules())
    assert finalizers_for(final) == []
    _same(final, convert_qat(qat))


def test_masks_are_baked_before_qat_is_frozen():
    masked = magnitude_prune(models.create("lenet5"), None, UnstructuredConfig(sparsity=0.5))
    qat = quantize_qat(masked.eval(), X[:1], QuantConfig(weight_bits=4), data=_calibration())
    assert finalizers_for(qat) == ["masks", "qat"]
    final = slimkit.finalize(qat)
    assert not attached_masks(final)
    _same(final, convert_qat(finalize_masks(qat)))


def test_a_final_model_comes_back_as_a_copy():
    ptq = quantize(models.create("lenet5").eval(), X[:1], QuantConfig(), data=_calibration())
    assert finalizers_for(ptq) == []  # PTQ is final already
    final = slimkit.finalize(ptq)
    assert final is not ptq
    _same(final, ptq)
