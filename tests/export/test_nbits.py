import numpy as np
import onnx
import pytest
import torch
from torch import nn

from slimkit.export import ExportError, MatMulNBitsLinear, export_matmul_nbits, matmul_nbits_count
from slimkit.export._nbits import KVCacheLM, pack_bits, unpack_bits
from slimkit.quantize import QuantConfig, QuantizedLinear, quantize
from tests.quantize._lm import logits, tiny_llama, token_batches

#: (bits, group size, symmetric): 3 bits go in the 4-bit container; None is one block per row (K=40 → 64)
VARIANTS = [(4, 32, True), (4, 32, False), (4, 16, False), (2, 16, True), (3, 32, False), (3, 32, True),
            (8, 64, False), (8, 128, True), (4, None, True), (4, 128, False)]


def _layer(bits, group_size, symmetric, k, n, seed):
    torch.manual_seed(seed)
    linear = nn.Linear(k, n, bias=seed % 2 == 0)
    config = QuantConfig(weight_bits=bits, group_size=group_size, weight_symmetric=symmetric, activation_bits=None)
    return quantize(nn.Sequential(linear), None, config)[0]


def test_bit_packing_is_low_bits_first():
    codes = np.array([[1, 2, 3, 0, 15, 4]])
    assert pack_bits(codes, 4).tolist() == [[0x21, 0x03, 0x4F]]
    assert pack_bits(np.array([[1, 2, 3, 0]]), 2).tolist() == [[0b00111001]]
    packed = torch.from_numpy(pack_bits(np.arange(16).reshape(1, 16) % 4, 2))
    assert unpack_bits(packed, 2, 16).tolist() == [(np.arange(16) % 4).tolist()]


@pytest.mark.parametrize("bits, group_size, symmetric", VARIANTS)
def test_matmul_nbits_layout_reproduces_the_quantized_layer(bits, group_size, symmetric):
    layer = _layer(bits, group_size, symmetric, 40 if group_size is None else 256, 24, seed=bits)
    packed = MatMulNBitsLinear(layer)
    assert packed.bits == {2: 2, 3: 4, 4: 4, 8: 8}[bits]
    k_blocks = -(-layer.in_features // packed.block_size)
    assert packed.packed.shape == (24, k_blocks, packed.block_size * packed.bits // 8)
    assert (packed.zero_points is None) == (symmetric and bits != 3)
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        assert torch.allclose(packed(x), layer(x), atol=1e-5)


def test_matmul_nbits_onnx_matches_the_fake_quant_model(tmp_path):
    sizes = [256, 256, 256, 128, 256, 256, 256, 256, 40, 256, 256]
    layers = [_layer(b, g, s, 40 if g is None else sizes[i], sizes[i + 1], seed=i) for i, (b, g, s) in
              enumerate(VARIANTS)]
    model = nn.Sequential(*layers).eval()
    x = torch.randn(2, 5, 256)
    path = export_matmul_nbits(model, x, tmp_path / "mlp.onnx", atol=1e-5)
    assert matmul_nbits_count(path) == len(VARIANTS)
    graph = onnx.load(str(path)).graph
    assert not [n.op_type for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    nodes = [n for n in graph.node if n.op_type == "MatMulNBits"]
    attrs = [{a.name: a.i for a in n.attribute} for n in nodes]
    assert [a["bits"] for a in attrs] == [4, 4, 4, 2, 4, 4, 8, 8, 4, 4]
    assert [a["block_size"] for a in attrs] == [32, 32, 16, 16, 32, 32, 64, 128, 64, 128]
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = torch.randn(3, 7, 256)  # dynamic batch and sequence
    got = session.run(None, {session.get_inputs()[0].name: other.numpy()})[0]
    with torch.no_grad():
        expected = model(other).numpy()
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_quantized_llama_runs_on_matmul_nbits_with_a_kv_cache(tmp_path):
    model = tiny_llama()
    data, ids = token_batches(2), token_batches(1, batch=1, length=8, seed=3)[0]
    q = quantize(model, None, QuantConfig(method="gptq", weight_bits=4, group_size=16, activation_bits=None),
                 data=data)
    path = export_matmul_nbits(q, ids, tmp_path / "llama.onnx", kv_cache=True)
    assert matmul_nbits_count(path) == 15
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names[:3] == ["input_ids", "past_key_values.0.key", "past_key_values.0.value"]
    graph = KVCacheLM(q)
    prefill = session.run(None, {"input_ids": ids.numpy(),
                                 **{n: t.numpy() for n, t in zip(names[1:], graph.empty_past(1))}})
    ref = logits(q, ids).numpy()
    assert np.abs(prefill[0] - ref).max() <= 1e-4 * np.abs(ref).max()
    nxt = torch.tensor([[5]])
    decode = session.run(None, {"input_ids": nxt.numpy(), **dict(zip(names[1:], prefill[1:]))})
    full = logits(q, torch.cat([ids, nxt], dim=1))[:, -1:].numpy()
    assert np.abs(decode[0] - full).max() <= 1e-4 * np.abs(full).max()
    assert decode[1].shape[2] == 9  # the present cache grew by the decoded token


def test_layers_matmul_nbits_cannot_express_are_refused():
    with pytest.raises(ExportError, match="power of two"):
        MatMulNBitsLinear(_layer(4, 48, False, 96, 8, seed=0))
    layer = _layer(4, 32, False, 64, 8, seed=0)
    layer.group_index = torch.arange(64) % 2
    with pytest.raises(ExportError, match="static_groups"):
        MatMulNBitsLinear(layer)
    with pytest.raises(ExportError, match="accuracy_level"):
        export_matmul_nbits(nn.Sequential(layer), torch.randn(2, 64), "unused.onnx", accuracy_level=7)
    assert isinstance(layer, QuantizedLinear)
