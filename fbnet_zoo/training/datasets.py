"""The one entry point from settings to data: ``build_datasets(settings, resolution)``."""

from __future__ import annotations

import json
import threading
from typing import Any, Dict, Mapping, Tuple, Union

from torch.utils.data import Dataset

from .data import DATASETS, DataError, limit
from .settings import DataSettings, TrainSettings


def build_datasets(settings: Union[DataSettings, TrainSettings, Mapping[str, Any]],
                   resolution: int) -> Tuple[Dataset, Dataset, int]:
    """``(train, val, num_classes)`` for the data settings at image side ``resolution``: torch
    datasets of ``(CHW float tensor, label)`` with per-sample transforms.

    The validation set is held-out data, never the training images: the embedded set's own
    val split, CIFAR-10's test batch or ImageFolder's val folder, or, with ``holdout``, a seeded
    split carved from train. The datasets may carry ``source_class_indices`` (ImageFolder with N
    random classes) for reading a teacher's logits.
    """
    data = DataSettings.from_dict(settings)
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8:
        raise DataError(f"resolution: {resolution!r} is not an integer >= 8")
    splits = DATASETS[data.dataset].build(data, resolution)
    train = limit(splits.train, data.max_train_images, data.data_seed)
    val = limit(splits.val, data.max_val_images, data.data_seed + 1)
    if splits.source_class_indices is not None:
        for ds in (train, val):
            ds.source_class_indices = splits.source_class_indices
    return train, val, len(splits.classes)


_DATA_CACHE: Dict[Any, Tuple[Any, Any, int]] = {}
_CACHE_LOCK = threading.Lock()


def cached_datasets(settings: Union[DataSettings, TrainSettings, Mapping[str, Any]], resolution: int):
    """``build_datasets`` memoised per process (a few entries: a search reuses one dataset and a
    few resolutions; ImageFolder scans and the embedded generation are then paid once)."""
    data = DataSettings.from_dict(settings)
    k = json.dumps(data.to_dict(), sort_keys=True, default=str), resolution
    with _CACHE_LOCK:
        if k not in _DATA_CACHE:
            if len(_DATA_CACHE) >= 4:
                _DATA_CACHE.pop(next(iter(_DATA_CACHE)))
            _DATA_CACHE[k] = build_datasets(data, resolution)
        return _DATA_CACHE[k]
