"""Datasets for model-extraction experiments, loaded one way: `load_dataset(name, split)`.

Jagielski et al. (2020), "High Accuracy and High Fidelity Extraction of Neural Networks", use
MNIST and CIFAR-10 in Table 6, SVHN and CIFAR-10 in Table 3 and Fashion-MNIST in Table 4;
scikit-learn's 8x8 ``digits`` is a tiny always-present stand-in for quick experiments and tests.

>>> from model_extraction.datasets import load_dataset
>>> d = load_dataset("digits", "test")
>>> len(d), d.input_shape, d.pixel_max
(297, (1, 8, 8), 16)

Files are looked up in ``data_dir``, ``$MODEL_EXTRACTION_DATA``, the cache
(``$MODEL_EXTRACTION_CACHE``, default ``~/.cache/model-extraction``) and system locations,
then downloaded into the cache if allowed. Everything is verified against known checksums.
"""

from .dataset import SPLITS, Dataset
from .errors import DatasetCorruptError, DatasetNotFoundError
from .locations import CACHE_ENV, DATA_ENV, cache_dir
from .registry import DATASET_NAMES, canonical_name, load_dataset, load_image_folder
from .report import dataset_report, format_report

__all__ = [
    "CACHE_ENV",
    "DATASET_NAMES",
    "DATA_ENV",
    "SPLITS",
    "Dataset",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "cache_dir",
    "canonical_name",
    "dataset_report",
    "format_report",
    "load_dataset",
    "load_image_folder",
]
