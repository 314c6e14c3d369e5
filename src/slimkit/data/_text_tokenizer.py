"""A byte-level BPE tokenizer trained on a corpus's train split with Hugging Face ``tokenizers``, cached as JSON.

Byte-level BPE (Radford et al. 2019, GPT-2 §2.2; Sennrich et al. 2016 for BPE): the base alphabet is the 256 bytes,
so any text round-trips exactly (``decode(encode(s)) == s``) and there is no unknown token; GPT-2's pre-tokenizer
regex keeps runs of spaces (Python indentation) together. One special token, ``<|endoftext|>`` (id 0), separates
files in the token stream.

The trained tokenizer is cached at ``<cache>/tokenizers/<name>-bpe<vocab>-<key>.json`` where the key hashes
everything that determines it: the train split's fingerprint, the vocabulary size, the minimum pair frequency,
the special tokens, the ``tokenizers`` version and :data:`TOKENIZER_VERSION`. Loading reads that JSON with
``Tokenizer.from_file``: data, never code. Token ids of a split are cached next to it as ``.npy`` (uint16/uint32,
loaded with ``allow_pickle=False``), keyed by the tokenizer file's own hash and the split's fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimkit._errors import ConfigError, DataError
from slimkit._io import atomic_write, cache_root, write_text_atomic
from slimkit.data._text import TextCorpus

log = logging.getLogger(__name__)

#: bump when the tokenizer recipe (pre-tokenizer, trainer settings, special tokens) changes
TOKENIZER_VERSION = 1
EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (EOS_TOKEN,)


def _tokenizers():
    try:
        import tokenizers
    except ImportError as error:  # pragma: no cover - installed with slimkit's "hf" extra
        raise DataError("text datasets need the 'tokenizers' package: pip install 'slimkit[hf]'") from error
    return tokenizers


def tokenizer_key(corpus: TextCorpus, vocab_size: int, min_frequency: int = 2) -> str:
    """A short hash of everything that determines the trained tokenizer."""
    record = {
        "train": corpus.fingerprint("train"), "vocab_size": vocab_size, "min_frequency": min_frequency,
        "special": list(SPECIAL_TOKENS), "tokenizers": _tokenizers().__version__, "recipe": TOKENIZER_VERSION,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def _check_vocab(vocab_size: int, min_frequency: int) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 257 + len(SPECIAL_TOKENS) <= vocab_size:
        raise ConfigError(f"vocab_size={vocab_size!r}: a byte-level BPE needs at least 256 bytes + "
                          f"{len(SPECIAL_TOKENS)} special token(s) + 1 merge; use e.g. 4096")
    if vocab_size > 2**17:
        raise ConfigError(f"vocab_size={vocab_size} is far larger than a text corpus here supports: use ≤ 131072")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ConfigError(f"min_frequency={min_frequency!r}: use an integer ≥ 1 (rarer pairs are not merged)")


def train_bpe(texts: list[str], vocab_size: int, min_frequency: int = 2) -> Any:
    """Train a byte-level BPE ``tokenizers.Tokenizer`` on ``texts`` (deterministic for the same texts)."""
    _check_vocab(vocab_size, min_frequency)
    tk = _tokenizers()
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def corpus_tokenizer(corpus: TextCorpus, vocab_size: int = 4096, *, min_frequency: int = 2,
                     cache: bool = True) -> Any:
    """The BPE tokenizer of ``corpus``'s train split, trained once and then loaded from the cache (JSON)."""
    _check_vocab(vocab_size, min_frequency)
    key = tokenizer_key(corpus, vocab_size, min_frequency)
    path = cache_root() / "tokenizers" / f"{corpus.name}-bpe{vocab_size}-{key}.json"
    tk = _tokenizers()
    if cache and path.is_file():
        try:
            return tk.Tokenizer.from_file(str(path))
        except Exception as error:  # a damaged cache file is rebuilt, never trusted
            log.warning("cached tokenizer %s is unreadable (%s): training it again", path, error)
    log.info("training a %d-token BPE on %d files", vocab_size, len(corpus.files["train"]))
    tokenizer = train_bpe(corpus.texts("train"), vocab_size, min_frequency)
    if tokenizer.get_vocab_size() != vocab_size:
        raise DataError(f"the train split yields only {tokenizer.get_vocab_size()} tokens at min_frequency="
                        f"{min_frequency}, fewer than vocab_size={vocab_size}: use a smaller vocab_size")
    if cache:
        write_text_atomic(path, tokenizer.to_str())
    return tokenizer


def tokenizer_hash(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's JSON (identifies it in cache keys and saved records)."""
    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()


def encode_split(corpus: TextCorpus, tokenizer: Any, split: str, *, cache: bool = True) -> torch.Tensor:
    """One split as a single 1-D stream of token ids: each file's tokens followed by ``<|endoftext|>``."""
    eos = tokenizer.token_to_id(EOS_TOKEN)
    if eos is None:
        raise DataError(f"the tokenizer has no '{EOS_TOKEN}' token: build it with slimkit.data.corpus_tokenizer")
    key = hashlib.sha256(f"{tokenizer_hash(tokenizer)}\n{corpus.fingerprint(split)}".encode()).hexdigest()[:16]
    path = cache_root() / "tokens" / f"{corpus.name}-{split}-{key}.npy"
    if cache and path.is_file():
        try:
            # mapped, not read: a header claiming more ids than the file holds fails here instead of allocating
            cached = np.load(path, allow_pickle=False, mmap_mode="r")
            if cached.ndim != 1 or cached.dtype.kind != "u" or (cached.size and
                                                               int(cached.max()) >= tokenizer.get_vocab_size()):
                raise ValueError("not a stream of this tokenizer's ids")
            return torch.from_numpy(np.asarray(cached, dtype=np.int64))
        except (OSError, ValueError, EOFError) as error:
            log.warning("cached token ids %s are unreadable (%s): encoding again", path, error)
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(corpus.texts(split), add_special_tokens=False):
        ids.extend(encoding.ids)
        ids.append(eos)
    dtype = np.uint16 if tokenizer.get_vocab_size() <= 2**16 else np.uint32
    array = np.asarray(ids, dtype=dtype)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as handle:
            np.save(handle, array, allow_pickle=False)
    return torch.from_numpy(array.astype(np.int64))


def token_blocks(ids: torch.Tensor, block_size: int, *, pad_id: int, keep_partial: bool,
                 ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a token stream into next-token blocks: ``inputs[i] = ids[iL : iL+L]``, ``targets[i] = ids[iL+1 : iL+L+1]``.

    Blocks overlap by one token, so every token after the first is a target exactly once. The last, partial block
    is dropped, or (``keep_partial``, for evaluation: every held-out token counts) padded with ``pad_id`` inputs
    and ``ignore_index`` targets, which losses and perplexity skip.
    """
    if block_size < 1:
        raise ConfigError(f"block_size={block_size}: use a positive number of tokens, e.g. 256")
    n_targets = len(ids) - 1
    if n_targets < 1:
        raise DataError("the token stream is too short to make a single block")
    full = n_targets // block_size
    count = full + (1 if keep_partial and n_targets % block_size else 0)
    if count == 0:
        raise DataError(f"the token stream ({len(ids)} tokens) is shorter than one block of {block_size}: "
                        "use a smaller block_size")
    inputs = torch.full((count, block_size), pad_id, dtype=torch.long)
    targets = torch.full((count, block_size), ignore_index, dtype=torch.long)
    if full:
        inputs[:full] = ids[: full * block_size].view(full, block_size)
        targets[:full] = ids[1 : full * block_size + 1].view(full, block_size)
    if count > full:
        rest = n_targets - full * block_size
        inputs[full, :rest] = ids[full * block_size : full * block_size + rest]
        targets[full, :rest] = ids[full * block_size + 1 :]
    return inputs, targets


def tokenizer_file(tokenizer: Any, path: str | Path) -> Path:
    """Write the tokenizer's JSON atomically to ``path`` (e.g. beside a saved model)."""
    write_text_atomic(path, tokenizer.to_str())
    return Path(path)
