"""Datasets as in-memory uint8 tensors plus the normalization a teacher was trained with.

Everything the project trains on fits in memory (digits, Fashion-MNIST, CIFAR-10), so a dataset is a pair of
tensors; this keeps training loops free of DataLoader worker overhead on small CPUs.
"""
from dfkd_core.data.datasets import (
    DATASETS,
    DatasetInfo,
    DatasetMissingError,
    ImageSplit,
    dataset_info,
    load_split,
    resolve_data_root,
)

__all__ = ["DATASETS", "DatasetInfo", "DatasetMissingError", "ImageSplit", "dataset_info", "load_split",
           "resolve_data_root"]
