"""Language-model data: the standard-library corpus as fixed-length next-token blocks, registered as ``stdlib``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from slimkit._errors import ConfigError, DataError
from slimkit.data._loader import TensorLoader
from slimkit.data._registry import DATASETS, DataBundle
from slimkit.data._text import SPLITS, TextCorpus, stdlib_corpus
from slimkit.data._text_tokenizer import EOS_TOKEN, corpus_tokenizer, encode_split, token_blocks, tokenizer_hash

#: the vocabulary size of the default stdlib tokenizer (chosen on the validation split: see benchmarks/bench_lm.py)
STDLIB_VOCAB = 4096
IGNORE_INDEX = -100


@dataclass
class TextDataBundle(DataBundle):
    """A :class:`DataBundle` of token blocks. Batches are ``(input_ids N×L, targets N×L)`` with targets already
    shifted (``targets[:, t]`` is the token after ``input_ids[:, t]``) and ``-100`` where there is nothing to
    predict, so any model that returns per-position logits is scored by plain cross-entropy, no shifting.

    ``split_bytes`` and ``split_tokens`` give bits per byte: ``loss · tokens / (ln 2 · bytes)``.
    """

    tokenizer: Any = None
    corpus: TextCorpus | None = None
    block_size: int = 256
    split_bytes: dict[str, int] = field(default_factory=dict)
    split_tokens: dict[str, int] = field(default_factory=dict)
    fingerprint: str = ""

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """``batch`` real token blocks from the calibration set (long ids), repeated if it has fewer."""
        blocks = self.calibration.inputs  # type: ignore[attr-defined]
        reps = math.ceil(batch / len(blocks))
        return blocks.repeat(reps, 1)[:batch].clone()

    def bits_per_byte(self, split: str, mean_token_loss: float) -> float:
        """Tokenizer-independent cross-entropy of ``split``: nats per token × tokens / bytes / ln 2."""
        return mean_token_loss * self.split_tokens[split] / (math.log(2) * self.split_bytes[split])


def text_bundle(
    corpus: TextCorpus,
    name: str,
    *,
    vocab_size: int,
    block_size: int,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    calibration_size: int,
    cache: bool = True,
) -> TextDataBundle:
    """Tokenize ``corpus`` with its cached BPE and cut each split into blocks (train: full blocks, shuffled;
    valid/test: every token, last block padded; calibration: ``calibration_size`` fixed train blocks)."""
    if isinstance(calibration_size, bool) or not isinstance(calibration_size, int) or calibration_size < 1:
        raise ConfigError(f"calibration_size={calibration_size!r}: use a positive number of blocks, e.g. 128")
    tokenizer = corpus_tokenizer(corpus, vocab_size, cache=cache)
    eos = tokenizer.token_to_id(EOS_TOKEN)
    streams = {split: encode_split(corpus, tokenizer, split, cache=cache) for split in SPLITS}
    train = token_blocks(streams["train"], block_size, pad_id=eos, keep_partial=False)
    valid = token_blocks(streams["valid"], block_size, pad_id=eos, keep_partial=True)
    test = token_blocks(streams["test"], block_size, pad_id=eos, keep_partial=True)
    calibration_idx = torch.randperm(len(train[0]), generator=torch.Generator().manual_seed(seed))[:calibration_size]
    return TextDataBundle(
        name=name,
        train=TensorLoader(*train, batch_size, shuffle=True, seed=seed),
        valid=TensorLoader(*valid, eval_batch_size),
        test=TensorLoader(*test, eval_batch_size),
        calibration=TensorLoader(train[0][calibration_idx], train[1][calibration_idx], eval_batch_size),
        input_shape=(block_size,),
        num_classes=tokenizer.get_vocab_size(),
        task="lm",
        tokenizer=tokenizer,
        corpus=corpus,
        block_size=block_size,
        split_bytes={split: corpus.num_bytes(split) for split in SPLITS},
        split_tokens={split: len(streams[split]) - 1 for split in SPLITS},
        fingerprint=f"{corpus.fingerprint()}:{tokenizer_hash(tokenizer)[:16]}",
    )


@DATASETS.register("stdlib", num_classes=STDLIB_VOCAB, task="lm")  # no input_shape: inputs are token ids
def stdlib(
    batch_size: int = 16,
    *,
    block_size: int = 256,
    vocab_size: int = STDLIB_VOCAB,
    eval_batch_size: int = 32,
    seed: int = 0,
    calibration_size: int = 128,
    augment: bool | str | None = False,
) -> TextDataBundle:
    """The Python standard library's source (see :mod:`slimkit.data._text` for the files and the by-file split),
    tokenized with a byte-level BPE trained on its train split, as next-token blocks of ``block_size`` tokens.
    ``augment`` exists so every dataset takes the same options: text has no augmentation."""
    if augment not in (False, None, "", "none"):
        raise DataError(f"augment={augment!r}: the stdlib text dataset has no augmentations, leave it out")
    return text_bundle(
        stdlib_corpus(), "stdlib", vocab_size=vocab_size, block_size=block_size, batch_size=batch_size,
        eval_batch_size=eval_batch_size, seed=seed, calibration_size=calibration_size,
    )
