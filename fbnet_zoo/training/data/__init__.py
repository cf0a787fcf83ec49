"""Datasets behind a small registry (``registry.DATASETS``): ``embedded`` (the generated
default), ``cifar10`` and ``imagefolder``. Importing this package registers the three."""

from . import cifar10, embedded, imagefolder  # noqa: F401  (registration)
from .cifar10 import BatchUnpickler, cifar10_datasets, load_cifar10
from .common import TensorImageDataset, holdout_split, limit, tensor_transforms
from .embedded import EMBEDDED_CLASSES, EmbeddedDataset, make_embedded_arrays, make_embedded_dataset
from .imagefolder import (MAX_IMAGE_PIXELS, check_image, choose_classes, imagefolder_datasets,
                          imagefolder_transforms, scan_image_folder)
from .registry import DATASETS, DataError, DatasetSplits, register_dataset

__all__ = ["BatchUnpickler", "DATASETS", "DataError", "DatasetSplits", "EMBEDDED_CLASSES", "EmbeddedDataset",
           "MAX_IMAGE_PIXELS", "TensorImageDataset", "check_image", "choose_classes", "cifar10_datasets",
           "holdout_split", "imagefolder_datasets", "imagefolder_transforms", "limit", "load_cifar10",
           "make_embedded_arrays", "make_embedded_dataset", "register_dataset", "scan_image_folder",
           "tensor_transforms"]
