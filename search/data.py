"""Deprecated alias: the datasets moved to ``fbnet_zoo.training.data`` (one module per dataset,
behind a registry) and ``fbnet_zoo.training.datasets`` (``build_datasets``)."""

import warnings

from fbnet_zoo.training.data import *  # noqa: F401,F403
from fbnet_zoo.training.data import DATASETS, DataError, TensorImageDataset, holdout_split  # noqa: F401
from fbnet_zoo.training.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD  # noqa: F401
from fbnet_zoo.training.data.embedded import EMBEDDED_MEAN, EMBEDDED_STD  # noqa: F401
from fbnet_zoo.training.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401
from fbnet_zoo.training.datasets import build_datasets  # noqa: F401

warnings.warn("fbnet_zoo.search.data moved to fbnet_zoo.training.data / fbnet_zoo.training.datasets",
              DeprecationWarning, stacklevel=2)
