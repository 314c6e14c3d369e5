"""Hostile and damaged containers: nothing in a .slim file can run code, allocate beyond its size, or load wrongly."""

import hashlib
import json
import random
import struct
import time
import zlib

import pytest
import torch

from slimkit import CheckpointError, ModelSpecError, SlimkitError
from slimkit.models import create
from slimkit.prune._unstructured import UnstructuredConfig, finalize, magnitude_prune
from slimkit.share import cluster_weights, load_compressed, save_compressed
from slimkit.share._container import MAGIC


def _clustered():
    torch.manual_seed(0)
    pruned = magnitude_prune(create("lenet300"), None, UnstructuredConfig(sparsity=0.9))
    return cluster_weights(finalize(pruned), None).eval()


def _split(raw: bytes) -> tuple[dict, bytes]:
    """(header, payload) of a format-3 file."""
    header_len = struct.unpack("<I", raw[12:16])[0]
    start = 16 + 32
    return json.loads(zlib.decompress(raw[start:start + header_len])), raw[start + header_len:]


def _forge(header: dict | bytes, payload: bytes, version: int = 3) -> bytes:
    """A container with a valid checksum around an attacker's header: what a hostile file looks like."""
    body = header if isinstance(header, bytes) else zlib.compress(json.dumps(header).encode())
    digest = hashlib.sha256(body + payload).digest()
    return MAGIC + struct.pack("<II", version, len(body)) + digest + body + payload


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    path = tmp_path_factory.mktemp("slim") / "genuine.slim"
    save_compressed(_clustered(), path, spec="lenet300")
    return path.read_bytes()


def test_a_header_naming_python_code_never_imports_it(tmp_path, genuine):
    marker = tmp_path / "ran.txt"
    (tmp_path / "payload.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\ndef factory():\n    pass\n")
    header, payload = _split(genuine)
    for spec in (f"{tmp_path}/payload.py:factory", "payload.py:factory"):
        header["spec"] = spec
        (tmp_path / "evil.slim").write_bytes(_forge(header, payload))
        with pytest.raises(ModelSpecError, match="never imports code"):
            load_compressed(tmp_path / "evil.slim")
    assert not marker.exists()


def test_a_user_code_model_is_saved_without_its_import_path(tmp_path):
    (tmp_path / "mine.py").write_text("from torch import nn\ndef build():\n    return nn.Sequential(nn.Linear(4, 3))\n")
    spec = f"{tmp_path}/mine.py:build"
    from slimkit.models import from_spec

    model = from_spec(spec, allow_code=True).eval()
    save_compressed(model, tmp_path / "m.slim", spec=spec)
    header, _ = _split((tmp_path / "m.slim").read_bytes())
    assert header["spec"] is None and "mine.py" not in json.dumps(header)
    with pytest.raises(ModelSpecError, match=r"spec='path/to/file\.py:factory'"):
        load_compressed(tmp_path / "m.slim")
    x = torch.randn(2, 4)
    assert torch.equal(load_compressed(tmp_path / "m.slim", spec=spec)(x), model(x))  # the caller typed it


def test_every_bit_flip_is_refused(tmp_path, genuine):
    rng = random.Random(0)
    target = tmp_path / "flip.slim"
    for _ in range(300):
        raw = bytearray(genuine)
        position = rng.randrange(len(raw))
        raw[position] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(raw))
        with pytest.raises(CheckpointError):
            load_compressed(target)


def test_truncations_are_refused(tmp_path, genuine):
    target = tmp_path / "cut.slim"
    for length in (0, 5, 16, 47, 60, len(genuine) // 2, len(genuine) - 1):
        target.write_bytes(genuine[:length])
        with pytest.raises(CheckpointError):
            load_compressed(target)


def _mutations(header: dict) -> list[dict]:
    layer, tensor = header["layers"][0], header["tensors"][0]
    variants = []
    for key, value in (("shape", [2**31, 2**31]), ("entries", 2**40), ("clusters", 2**40), ("index_bits", 60),
                       ("codebook", [0, 2**40]), ("symbols", {"coding": "raw", "width": 40, "data": [0, 0]}),
                       ("symbols", {"coding": "huffman", "bits": 2**50, "data": [0, 4], "table": [0, 4]}),
                       ("kind", "lstm"), ("name", "nope"), ("shape", 5), ("shape", None), ("shape", ["a"]),
                       ("conv", [1]), ("kind", "conv2d"), ("conv", {"stride": 1})):
        variants.append({**header, "layers": [{**layer, key: value}, *header["layers"][1:]]})
    for key, value in (("shape", [2**20, 2**20, 2**20]), ("data", [0, 2**40]), ("dtype", "complex1024"),
                       ("key", "fc9.weight"), ("data", "x"), ("shape", 5), ("dtype", "_inductor"), ("dtype", 7),
                       ("dtype", "qint8"), ("dtype", "quint4x2"), ("dtype", "bool")):
        variants.append({**header, "tensors": [{**tensor, key: value}, *header["tensors"][1:]]})
    variants += [{**header, "spec": "resnet20:width=1e9"}, {**header, "spec": "lenet300:num_classes=100000000"},
                 {**header, "spec": 7}, {**header, "layers": None}, {"spec": "lenet300"}]
    return variants


def test_forged_headers_fail_fast_without_allocating(tmp_path, genuine):
    header, payload = _split(genuine)
    target = tmp_path / "forged.slim"
    for variant in _mutations(header):
        target.write_bytes(_forge(variant, payload))
        began = time.perf_counter()
        with pytest.raises(SlimkitError):
            load_compressed(target)
        assert time.perf_counter() - began < 5, variant  # no multi-GB allocation, no long decode


def test_a_zlib_bomb_header_is_refused_quickly(tmp_path):
    bomb = zlib.compress(b"[" * (200 * 2**20), 9)  # 200 MiB of '[' in a ~200 KB header
    (tmp_path / "bomb.slim").write_bytes(_forge(bomb, b""))
    began = time.perf_counter()
    with pytest.raises(CheckpointError, match="at most"):
        load_compressed(tmp_path / "bomb.slim")
    assert time.perf_counter() - began < 5


def test_a_folder_is_not_a_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder"):
        load_compressed(tmp_path)


def test_a_conv_layer_keeps_the_architecture_s_stride_and_padding(tmp_path):
    """A clustered conv's arguments come from the file; one the architecture does not have (stride 0, a padding
    that would allocate gigabytes at the first forward, an unknown argument) is refused when loading."""
    torch.manual_seed(0)
    model = cluster_weights(finalize(magnitude_prune(create("lenet5"), None, UnstructuredConfig(sparsity=0.5))),
                            None).eval()
    save_compressed(model, tmp_path / "g.slim", spec="lenet5")
    header, payload = _split((tmp_path / "g.slim").read_bytes())
    conv = next(i for i, layer in enumerate(header["layers"]) if layer["kind"] == "conv2d")
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(load_compressed(tmp_path / "g.slim")(x), model(x))
    original = header["layers"][conv]["conv"]
    for change in ({"stride": [0, 0]}, {"padding": [100000, 100000]}, {"bogus": 1}, {"groups": 2},
                   {"stride": [1.0, 1.0]}, {"groups": True}):
        header["layers"][conv]["conv"] = {**original, **change}
        (tmp_path / "f.slim").write_bytes(_forge(header, payload))
        with pytest.raises(CheckpointError, match="not as the architecture's 'conv2d'"):
            load_compressed(tmp_path / "f.slim")


def test_a_forged_pruned_layout_is_refused_before_anything_is_set(tmp_path):
    # a channel-pruned container (format 4) records shapes and size attributes: a file may only shrink the
    # architecture's sizes, and only set whole-number attributes a module already holds (never a method or property)
    from slimkit.prune import PruneConfig, prune_channels

    pruned = prune_channels(create("resnet20").eval(), torch.zeros(1, 1, 28, 28), PruneConfig(ratio=0.5))
    path = tmp_path / "pruned.slim"
    save_compressed(cluster_weights(pruned, None).eval(), path, spec="resnet20")
    header, payload = _split(path.read_bytes())
    attributes = header["pruned_attributes"]
    assert list(attributes["layer2.0.shortcut"]) == ["pad"]  # the zero channels the shortcut adds
    grown = dict(header, tensors=[dict(t, shape=[64, 1, 3, 3]) if t["key"] == "bn1.weight" else t
                                  for t in header["tensors"]])
    variants = [
        (dict(header, pruned_attributes={**attributes, "fc": {"forward": 1}}), "not a size attribute"),
        (dict(header, pruned_attributes={**attributes, "fc": {"training": 0}}), "not a size attribute"),
        (dict(header, pruned_attributes={**attributes, "fc": {"in_features": 10**9}}), "not a size attribute"),
        (dict(header, pruned_attributes={**attributes, "layer2.0.shortcut": {"pad": [0, 0, 0, 0, 99, 99]}}),
         "not a size attribute"),
        (dict(header, pruned_attributes={**attributes, "nope": {"x": 1}}), "which the model does not have"),
        (dict(header, pruned_attributes=[1]), "not a mapping"),
        (grown, "is not a pruning of the model's"),
        # attributes of torch's own modules that pruning never changes (a stride undone quadruples a feature map)
        (dict(header, pruned_attributes={**attributes, "conv1": {"stride": [1, 1]}}), "not a size attribute"),
        (dict(header, pruned_attributes={**attributes, "conv1": {"_reversed_padding_repeated_twice": [0, 0, 0, 0]}}),
         "not a size attribute"),
        (dict(header, pruned_attributes={**attributes, "conv1.weight": {}}), "which the model does not have"),
        # sizes that disagree with the tensors: refused at load, not at the caller's first forward
        (dict(header, pruned_attributes={}), "its pruned layout does not run"),
    ]
    for variant, message in variants:
        path.write_bytes(_forge(variant, payload, version=4))
        with pytest.raises(CheckpointError, match=message):
            load_compressed(path)
    path.write_bytes(_forge(header, payload, version=3))  # only format 4 records a pruned layout
    with pytest.raises(CheckpointError, match="only format 4 has"):
        load_compressed(path)
