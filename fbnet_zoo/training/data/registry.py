"""The dataset registry: name -> how to build (train, val) for a resolution.

A builder takes ``(data_settings, resolution)`` and returns a ``DatasetSplits``. Register a
new dataset with ``register_dataset``; ``train.dataset`` in a config then accepts its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from torch.utils.data import Dataset

from fbnet_zoo.errors import DataError  # noqa: F401 - re-exported (its home is fbnet_zoo.errors)


@dataclass
class DatasetSplits:
    """What a builder returns. ``source_class_indices``: each kept class's index among all
    classes of the source (to read a teacher's logits when only some classes are used)."""

    train: Dataset
    val: Dataset
    classes: List[str]
    source_class_indices: Optional[List[int]] = None


@dataclass(frozen=True)
class DatasetEntry:
    build: Callable[[Any, int], DatasetSplits]
    in_memory: bool     # images held in memory, nothing to decode: data-loader workers gain nothing
    needs_dir: bool     # ``data_dir`` is required


DATASETS: Dict[str, DatasetEntry] = {}


def register_dataset(name: str, *, in_memory: bool, needs_dir: bool):
    """Decorator registering ``build(data_settings, resolution) -> DatasetSplits`` as ``name``."""

    def wrap(build: Callable[[Any, int], DatasetSplits]) -> Callable[[Any, int], DatasetSplits]:
        if name in DATASETS:
            raise DataError(f"dataset {name!r} is already registered")
        DATASETS[name] = DatasetEntry(build, in_memory, needs_dir)
        return build

    return wrap
