"""CIFAR-10 from the standard ``cifar-10-batches-py`` folder (python pickle batches).

The batches are pickles, and a pickle can name any importable callable: ``pickle.load`` on a
hostile ``data_batch_1`` would run it. They are read with ``BatchUnpickler``, which admits only
what the format holds (dicts, lists, bytes, str, numbers and numpy arrays: the few numpy
globals that rebuild an array) and refuses every other global before anything is called.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Subset

from .common import TensorImageDataset, holdout_split, tensor_transforms
from .registry import DataError, DatasetSplits, register_dataset

log = logging.getLogger(__name__)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# The globals a CIFAR-10 batch may reference: numpy's array / scalar reconstruction under the
# module names numpy 1.x (numpy.core) and 2.x (numpy._core) pickle them with, and
# ``_codecs.encode``, which Python 3 protocol-2 pickles use to rebuild bytes (a pure conversion).
SAFE_GLOBALS = frozenset(
    [(f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")]
    + [(f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")])


class BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ``SAFE_GLOBALS``; any other global is a DataError naming
    the file and the global, raised before the global is looked up, so nothing of it runs."""

    def __init__(self, file: Any, path: str):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        raise DataError(f"{self.path}: refused to unpickle global '{module}.{name}': a CIFAR-10 batch holds only "
                        "dicts, lists, bytes, str, numbers and numpy arrays (the file may be hostile; nothing "
                        "from it was run)")

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.path}: refused a persistent id in a CIFAR-10 batch (not the format)")


_CIFAR10_CACHE: Dict[Tuple[Any, ...], Dict[str, Any]] = {}
_CACHE_LOCK = threading.Lock()


def _unpickle(path: str) -> Dict[Any, Any]:
    try:
        with open(path, "rb") as f:
            return BatchUnpickler(f, path).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, MemoryError, OverflowError, RecursionError) as e:
        raise DataError(f"{path}: not a CIFAR-10 python pickle batch ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from None


def _batch_arrays(path: str) -> Tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    if not isinstance(d, dict):
        raise DataError(f"{path}: not a CIFAR-10 batch (expected a dict, got {type(d).__name__})")
    d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DataError(f"{path}: not a CIFAR-10 batch (keys {sorted(map(str, d))}; expected 'data' and 'labels')")
    data = np.asarray(d["data"])
    labels = np.asarray(d["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}; expected uint8 N x 3072")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels outside 0..9 (min {labels.min()}, max {labels.max()})")
    return data.reshape(-1, 3, 32, 32), labels


_CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


def _cifar10_folder(root: str) -> str:
    """The ``cifar-10-batches-py`` folder at ``root`` (the folder or its parent), with every file."""
    root = os.path.expanduser(os.fspath(root))
    folder = root if os.path.basename(os.path.normpath(root)) == "cifar-10-batches-py" else \
        os.path.join(root, "cifar-10-batches-py")
    if not os.path.isdir(folder):
        if os.path.isfile(os.path.join(root, "data_batch_1")):
            folder = root
        else:
            raise DataError(f"cifar10: no 'cifar-10-batches-py' folder at {root!r} (expected data_batch_1..5, "
                            "test_batch and batches.meta from https://www.cs.toronto.edu/~kriz/cifar.html)")
    missing = [n for n in _CIFAR10_FILES if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise DataError(f"cifar10: {folder!r} lacks {missing} (expected data_batch_1..5, test_batch, batches.meta)")
    return folder


def load_cifar10(root: str) -> Dict[str, Any]:
    """Read the standard ``cifar-10-batches-py`` folder (``root`` may be the folder itself or its
    parent). Returns ``{"train": (uint8 N x 3 x 32 x 32, int64 labels), "test": (...), "classes": [...]}``."""
    folder = _cifar10_folder(root)
    parts = [_batch_arrays(os.path.join(folder, f"data_batch_{i}")) for i in range(1, 6)]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = _batch_arrays(os.path.join(folder, "test_batch"))
    meta = _unpickle(os.path.join(folder, "batches.meta"))
    meta = {(k.decode() if isinstance(k, bytes) else k): v for k, v in meta.items()} if isinstance(meta, dict) else {}
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get("label_names", [])]
    if len(classes) != 10:
        raise DataError(f"cifar10: {os.path.join(folder, 'batches.meta')} has {len(classes)} label_names; expected 10")
    return {"train": train, "test": test, "classes": classes}


def cifar10_datasets(root: str, train_transform: Optional[Callable] = None,
                     test_transform: Optional[Callable] = None) -> Tuple[TensorImageDataset, TensorImageDataset]:
    """CIFAR-10 train and test sets as in-memory datasets (see ``load_cifar10``). The files are
    read once per process while they stay unchanged: datasets at several resolutions (one per
    transform) share one copy of the images."""
    folder = _cifar10_folder(root)
    stats = [os.stat(os.path.join(folder, n)) for n in _CIFAR10_FILES]
    key = (os.path.realpath(folder), tuple((st.st_mtime_ns, st.st_size) for st in stats))
    with _CACHE_LOCK:
        if key not in _CIFAR10_CACHE:
            _CIFAR10_CACHE.clear()  # keep at most one copy alive
            _CIFAR10_CACHE[key] = load_cifar10(folder)
        d = _CIFAR10_CACHE[key]
    (xi, yi), (xt, yt) = d["train"], d["test"]
    return (TensorImageDataset(torch.from_numpy(xi), torch.from_numpy(yi), train_transform, d["classes"]),
            TensorImageDataset(torch.from_numpy(xt), torch.from_numpy(yt), test_transform, d["classes"]))



def download_cifar10(root: str) -> None:
    """Fetch CIFAR-10 with torchvision (only for machines that can reach the internet)."""
    folder = os.path.join(os.path.expanduser(root), "cifar-10-batches-py")
    if os.path.isdir(folder):
        return
    from torchvision.datasets import CIFAR10

    log.info("downloading CIFAR-10 into %s", root)
    CIFAR10(root, train=True, download=True)


@register_dataset("cifar10", in_memory=True, needs_dir=True)
def build_cifar10(settings: Any, resolution: int) -> DatasetSplits:
    """CIFAR-10's train batches and test batch, or with ``settings.holdout`` a split of train."""
    if settings.data_dir is None:
        raise DataError("data_dir: required for dataset 'cifar10' (the folder holding cifar-10-batches-py)")
    if settings.download:
        download_cifar10(settings.data_dir)
    tr_t = tensor_transforms(resolution, 32, CIFAR10_MEAN, CIFAR10_STD, True, settings.augment)
    va_t = tensor_transforms(resolution, 32, CIFAR10_MEAN, CIFAR10_STD, False)
    train, val = cifar10_datasets(settings.data_dir, tr_t, va_t)
    classes = train.classes
    if settings.holdout is not None:
        tr, va = holdout_split(len(train), settings.holdout, settings.data_seed)
        train, val = Subset(train, tr), Subset(train.with_transform(va_t), va)
    return DatasetSplits(train, val, classes)
