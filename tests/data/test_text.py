import hashlib
import json

import pytest
import torch

from slimkit import ConfigError, DataError
from slimkit.data import (
    EOS_TOKEN,
    corpus_tokenizer,
    read_corpus,
    split_of,
    stdlib_corpus,
    stdlib_files,
    token_blocks,
)
from slimkit.data import _text_tokenizer as tokenizer_module


def _write_tree(root, files):
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def _small_corpus(tmp_path, count=60):
    files = {f"pkg{i % 3}/mod_{i}.py": f"def function_{i}(value):\n    return value * {i} + {i % 7}\n"
             for i in range(count)}
    _write_tree(tmp_path / "lib", files)
    return read_corpus(tmp_path / "lib", name="toy")


def test_split_is_a_documented_function_of_the_path_alone():
    for path in ("os.py", "asyncio/tasks.py", "email/mime/text.py"):
        bucket = int.from_bytes(hashlib.sha256(f"slimkit-stdlib:{path}".encode()).digest()[:8], "big") % 100
        assert split_of(path) == ("test" if bucket < 5 else "valid" if bucket < 10 else "train")


def test_stdlib_split_is_by_file_disjoint_complete_and_stable():
    corpus = stdlib_corpus()
    splits = {name: set(files) for name, files in corpus.files.items()}
    assert sum(map(len, splits.values())) == len(set().union(*splits.values()))  # disjoint
    assert set().union(*splits.values()) | set(corpus.skipped) == set(stdlib_files())
    for name, files in corpus.files.items():
        assert list(files) == sorted(files) and all(split_of(f) == name for f in files)
    assert len(splits["valid"]) >= 5 and len(splits["test"]) >= 5 and len(splits["train"]) > 10 * len(splits["test"])
    assert not any(part in {"test", "tests", "site-packages", "idlelib"} for f in stdlib_files()
                   for part in f.split("/")[:-1])
    assert read_corpus().fingerprint() == corpus.fingerprint()


def test_listing_skips_tests_third_party_and_machine_specific_files(tmp_path):
    _write_tree(tmp_path, {"a.py": "x = 1\n", "pkg/b.py": "y = 2\n", "test/t.py": "", "pkg/tests/t.py": "",
                           "site-packages/z/z.py": "", "_sysconfigdata__linux.py": "", "config-3.11-x/c.py": "",
                           "notes.txt": "", "pkg/__pycache__/b.py": ""})
    assert stdlib_files(tmp_path) == ["a.py", "pkg/b.py"]


def test_a_file_moves_split_only_with_its_path_and_content_changes_the_fingerprint(tmp_path):
    corpus = _small_corpus(tmp_path)
    (tmp_path / "lib" / "extra.py").write_text("z = 3\n")
    grown = read_corpus(tmp_path / "lib", name="toy")
    for name in corpus.files:
        assert set(corpus.files[name]) <= set(grown.files[name])
    assert grown.fingerprint() != corpus.fingerprint()


def test_tokenizer_round_trips_text_and_is_cached_as_json(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path / "cache"))
    corpus = _small_corpus(tmp_path)
    tokenizer = corpus_tokenizer(corpus, vocab_size=300, min_frequency=1)
    assert tokenizer.get_vocab_size() == 300 and tokenizer.token_to_id(EOS_TOKEN) == 0
    text = "def f(x):\n    return x  # naïve → ünïcode, tabs\t and   spaces\n"
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    cached = list((tmp_path / "cache" / "tokenizers").glob("toy-bpe300-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["model"]["type"] == "BPE"

    def must_not_train(*args, **kwargs):
        raise AssertionError("a cached tokenizer was trained again")

    monkeypatch.setattr(tokenizer_module, "train_bpe", must_not_train)
    again = corpus_tokenizer(corpus, vocab_size=300, min_frequency=1)
    assert again.to_str() == tokenizer.to_str()
    monkeypatch.undo()
    assert tokenizer_module.train_bpe(corpus.texts("train"), 300, 1).to_str() == tokenizer.to_str()  # deterministic
    with pytest.raises(ConfigError, match="vocab_size"):
        corpus_tokenizer(corpus, vocab_size=100)


def test_token_blocks_are_shifted_and_pad_the_last_block_with_ignored_targets():
    ids = torch.arange(10)
    inputs, targets = token_blocks(ids, 4, pad_id=0, keep_partial=True)
    assert inputs.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 0, 0, 0]]
    assert targets.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, -100, -100, -100]]
    inputs, targets = token_blocks(ids, 4, pad_id=0, keep_partial=False)
    assert inputs.shape == (2, 4) and int((targets != -100).sum()) == 8
    with pytest.raises(DataError, match="shorter than one block"):
        token_blocks(ids, 32, pad_id=0, keep_partial=False)


def test_damaged_cached_token_ids_are_encoded_again_without_allocating_what_they_claim(tmp_path, monkeypatch):
    """The token-id cache is a file slimkit reads back: a header claiming 2**40 ids, ids past the vocabulary, or
    another shape or dtype are encoded again (a warning), never allocated or used."""
    import numpy as np

    from slimkit.data import encode_split

    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path / "cache"))
    corpus = _small_corpus(tmp_path)
    tokenizer = corpus_tokenizer(corpus, vocab_size=300, min_frequency=1)
    ids = encode_split(corpus, tokenizer, "train")
    (path,) = (tmp_path / "cache" / "tokens").glob("*.npy")
    genuine = path.read_bytes()
    header = genuine[:genuine.index(b"\n") + 1]
    claimed = header.replace(f"({len(ids)},)".encode(), b"(1099511627776,)")
    assert claimed != header
    path.write_bytes(claimed + genuine[len(header):])
    assert torch.equal(encode_split(corpus, tokenizer, "train"), ids)
    for damaged in (np.full(len(ids), 300, dtype=np.uint16), np.zeros((2, 3), dtype=np.uint16),
                    np.zeros(len(ids), dtype=np.float32)):
        np.save(path, damaged)
        assert torch.equal(encode_split(corpus, tokenizer, "train"), ids)
