"""Datasets for candidate training: the embedded default, CIFAR-10 and ImageFolder (ImageNet layout).

``build_datasets(settings, resolution)`` is the one entry point the trainer uses; it returns
``(train_dataset, val_dataset, num_classes)`` as torch datasets of ``(CHW float tensor, label)``
with torchvision transforms applied per sample.

- ``embedded``: a procedurally generated 10-class RGB image set (32x32), made in memory from a
  fixed seed in about a second: no download, identical on every machine. Each class is a
  shape (disk, square, triangle, ring, plus, diamond, horizontal bars, vertical bars, checker,
  two dots) drawn at a random place, rotation and size (radius 4 to 14 px, log-uniform) in a
  random colour on a textured, noisy background. Colour carries no class information, so a
  network has to learn shapes; small shapes need resolution and large ones a receptive field
  that spans them, so architectures land at clearly different accuracies, and a clean image
  (no occluders or distractor shapes) keeps a candidate's accuracy stable from seed to seed.
- ``cifar10``: the standard ``cifar-10-batches-py`` folder (python pickle batches).
- ``imagefolder``: ``root/train/<class>/*`` (+ ``root/val/<class>/*``), optionally restricted to
  N random classes (the paper searched on 200 random ImageNet classes) and with a held-out split
  carved from train (the paper held out 10K training images as its validation set).
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

log = logging.getLogger(__name__)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EMBEDDED_MEAN = (0.5, 0.5, 0.5)
EMBEDDED_STD = (0.25, 0.25, 0.25)

EMBEDDED_CLASSES = ("disk", "square", "triangle", "ring", "plus", "diamond", "hbars", "vbars",
                    "checker", "two_dots")
DATASETS = ("embedded", "cifar10", "imagefolder")


class DataError(ValueError):
    """A dataset that cannot be read: missing folder, wrong format, bad option. The message
    names the path or option and what was expected."""


# --------------------------------------------------------------------------------------------
# In-memory uint8 image sets (embedded, CIFAR-10)


class TensorImageDataset(Dataset):
    """Images held in memory as a uint8 tensor N x 3 x H x W with int64 labels; ``transform``
    (torchvision, tensor-in/tensor-out) is applied per sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Optional[Callable] = None,
                 classes: Optional[Sequence[str]] = None):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise DataError(f"images: expected a uint8 N x 3 x H x W tensor, got {images.dtype} "
                            f"{tuple(images.shape)}")
        if labels.shape[0] != images.shape[0]:
            raise DataError(f"labels: {labels.shape[0]} labels for {images.shape[0]} images")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.transform = transform
        self.classes = list(classes) if classes is not None else None
        self.targets = self.labels.tolist()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        img = self.images[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]

    def with_transform(self, transform: Optional[Callable]) -> "TensorImageDataset":
        return TensorImageDataset(self.images, self.labels, transform, self.classes)


def _rotated_coords(n: int, size: int, cx: np.ndarray, cy: np.ndarray, scale: np.ndarray,
                    angle: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-image shape coordinates (u, v) in units of the shape's radius, shape n x size x size."""
    grid = (np.arange(size, dtype=np.float32) + 0.5)
    y, x = np.meshgrid(grid, grid, indexing="ij")
    dx = (x[None] - cx[:, None, None]) / scale[:, None, None]
    dy = (y[None] - cy[:, None, None]) / scale[:, None, None]
    c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    return (c * dx + s * dy).astype(np.float32), (-s * dx + c * dy).astype(np.float32)


def _shape_mask(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of class ``cls``'s shape in shape coordinates (radius ~1)."""
    r = np.sqrt(u * u + v * v)
    box = (np.abs(u) < 1.0) & (np.abs(v) < 1.0)
    if cls == 0:  # disk
        return r < 0.95
    if cls == 1:  # square
        return (np.abs(u) < 0.8) & (np.abs(v) < 0.8)
    if cls == 2:  # triangle, apex up
        return (v < 0.75) & (v > -0.85 + 1.7 * np.abs(u) / 0.95) & (np.abs(u) < 0.95)
    if cls == 3:  # ring
        return (r < 1.0) & (r > 0.55)
    if cls == 4:  # plus
        return ((np.abs(u) < 0.3) & (np.abs(v) < 1.0)) | ((np.abs(v) < 0.3) & (np.abs(u) < 1.0))
    if cls == 5:  # diamond
        return np.abs(u) + np.abs(v) < 1.05
    if cls == 6:  # horizontal bars
        return box & (np.sin(v * 2.5 * np.pi) > 0)
    if cls == 7:  # vertical bars
        return box & (np.sin(u * 2.5 * np.pi) > 0)
    if cls == 8:  # checker
        return box & (np.sin(u * 2.2 * np.pi) * np.sin(v * 2.2 * np.pi) > 0)
    if cls == 9:  # two dots side by side
        return (np.sqrt((u - 0.55) ** 2 + v * v) < 0.42) | (np.sqrt((u + 0.55) ** 2 + v * v) < 0.42)
    raise DataError(f"embedded class {cls} does not exist")


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all inputs in [0, 1]; returns n x 3."""
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(c, 1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    return table[i, np.arange(len(h))]


def make_embedded_arrays(n: int, seed: int = 0, size: int = 32) -> Tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` labelled images (uint8 n x 3 x size x size, int64 labels), balanced over the
    10 classes, deterministically from ``seed``."""
    if n < 1:
        raise DataError(f"embedded size: {n!r} is not a positive number of images")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(EMBEDDED_CLASSES))
    f32 = np.float32
    # Background: a random linear colour gradient plus low-frequency texture.
    grid = np.linspace(-1.0, 1.0, size, dtype=f32)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    c0, c1 = rng.uniform(0.1, 0.9, (n, 3, 1, 1)).astype(f32), rng.uniform(0.1, 0.9, (n, 3, 1, 1)).astype(f32)
    theta = rng.uniform(0, 2 * np.pi, (n, 1, 1, 1)).astype(f32)
    ramp = (np.cos(theta) * xx + np.sin(theta) * yy + 1.0) / 2.0
    img = c0 + (c1 - c0) * ramp
    freq = rng.uniform(1.0, 4.0, (n, 2, 1, 1)).astype(f32)
    phase = rng.uniform(0, 2 * np.pi, (n, 2, 1, 1)).astype(f32)
    texture = np.sin(freq[:, :1] * np.pi * xx + phase[:, :1]) * np.sin(freq[:, 1:] * np.pi * yy + phase[:, 1:])
    img += 0.08 * texture * rng.uniform(0.0, 1.0, (n, 1, 1, 1)).astype(f32)

    # The labelled shape, over a wide range of sizes (radius 25% to 90% of half the image): small
    # ones need resolution, large ones a receptive field that spans them.
    scale = np.exp(rng.uniform(np.log(0.25), np.log(0.9), n)).astype(f32) * size / 2
    cx = rng.uniform(scale, size - scale).astype(f32)
    cy = rng.uniform(scale, size - scale).astype(f32)
    angle = rng.uniform(-0.45, 0.45, n).astype(f32)
    # Colour carries no class information: a random direction in RGB away from the background's
    # mean colour, far enough to keep the shape visible.
    d = rng.normal(0.0, 1.0, (n, 3)).astype(f32)
    d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-6
    rgb = np.clip(img.mean((2, 3)) + d * rng.uniform(0.35, 0.6, (n, 1)).astype(f32), 0.0, 1.0)
    u, v = _rotated_coords(n, size, cx, cy, scale, angle)
    mask = np.zeros((n, size, size), dtype=bool)
    for k in range(len(EMBEDDED_CLASSES)):
        idx = np.nonzero(labels == k)[0]
        if len(idx):
            mask[idx] = _shape_mask(k, u[idx], v[idx])
    m = mask[:, None].astype(f32)
    img = img * (1.0 - m) + m * rgb[:, :, None, None]
    img += rng.normal(0.0, 1.0, img.shape).astype(f32) * rng.uniform(0.02, 0.08, (n, 1, 1, 1)).astype(f32)
    images = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


_EMBEDDED_CACHE: Dict[Tuple[int, int, int], Tuple[torch.Tensor, torch.Tensor]] = {}
_CIFAR10_CACHE: Dict[Tuple[Any, ...], Dict[str, Any]] = {}
_CACHE_LOCK = threading.Lock()


def make_embedded_dataset(split: str = "train", train_size: int = 2500, val_size: int = 1000, seed: int = 0,
                          transform: Optional[Callable] = None) -> "EmbeddedDataset":
    """The embedded set's ``"train"`` or ``"val"`` split. Both come from one generated pool of
    ``train_size + val_size`` images (train first), so the splits never overlap and the train
    split does not change when ``val_size`` does. Generated once per process and cached."""
    if split not in ("train", "val"):
        raise DataError(f"embedded split: {split!r} is not one of ['train', 'val']")
    for name, v in (("train_size", train_size), ("val_size", val_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise DataError(f"embedded {name}: {v!r} is not a positive integer")
    key = (train_size, val_size, seed)
    with _CACHE_LOCK:
        if key not in _EMBEDDED_CACHE:
            # Train and val are drawn from independent streams so that either size can change
            # without changing the other split.
            ti, tl = make_embedded_arrays(train_size, seed=seed * 2 + 0)
            vi, vl = make_embedded_arrays(val_size, seed=seed * 2 + 1 + 10_000)
            _EMBEDDED_CACHE.clear()  # keep at most one generated set alive
            _EMBEDDED_CACHE[key] = (torch.from_numpy(np.concatenate([ti, vi])),
                                    torch.from_numpy(np.concatenate([tl, vl])))
        images, labels = _EMBEDDED_CACHE[key]
    sl = slice(0, train_size) if split == "train" else slice(train_size, train_size + val_size)
    return EmbeddedDataset(images[sl], labels[sl], transform, EMBEDDED_CLASSES)


class EmbeddedDataset(TensorImageDataset):
    """The procedurally generated 10-class 32x32 RGB set (see the module docstring)."""


# --------------------------------------------------------------------------------------------
# CIFAR-10


def _unpickle(path: str) -> Dict[Any, Any]:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise DataError(f"{path}: not a CIFAR-10 python pickle batch ({type(e).__name__}: {e})") from None


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


# --------------------------------------------------------------------------------------------
# ImageFolder (ImageNet layout)


def choose_classes(all_classes: Sequence[str], num_classes: Optional[int], seed: int) -> List[str]:
    """``num_classes`` classes drawn at random (seeded) from ``all_classes``, kept in sorted order;
    all of them when ``num_classes`` is None."""
    all_classes = sorted(all_classes)
    if num_classes is None:
        return all_classes
    if num_classes < 2 or num_classes > len(all_classes):
        raise DataError(f"num_classes: {num_classes} is outside [2, {len(all_classes)}] "
                        f"(the folder has {len(all_classes)} classes)")
    pick = np.random.default_rng(seed).choice(len(all_classes), size=num_classes, replace=False)
    return [all_classes[i] for i in sorted(pick)]


def _class_dirs(folder: str) -> List[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir())
    except OSError as e:
        raise DataError(f"imagefolder: cannot list {folder!r} ({e})") from None


def imagefolder_datasets(root: str, num_classes: Optional[int] = None, holdout: Union[int, float, None] = None,
                         seed: int = 0, train_transform: Optional[Callable] = None,
                         val_transform: Optional[Callable] = None):
    """ImageNet-layout folders: ``root/train/<class>/<image>`` and, unless ``holdout`` is given,
    ``root/val/<class>/<image>``. ``num_classes``: keep N random classes (seeded); labels are
    0..N-1 in sorted class order. ``holdout``: carve the validation set from train instead (a
    count of images, or a fraction in (0, 1)), chosen at random with ``seed``.

    Returns ``(train, val, classes, source_class_indices)`` where the last maps each kept class
    to its index among all classes of the folder (to read a 1000-way teacher's logits).
    """
    from torchvision.datasets import ImageFolder

    root = os.path.expanduser(os.fspath(root))
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise DataError(f"imagefolder: {train_dir!r} is not a folder (expected root/train/<class>/<image>)")
    all_classes = _class_dirs(train_dir)
    if len(all_classes) < 2:
        raise DataError(f"imagefolder: {train_dir!r} has {len(all_classes)} class folders; need at least 2")
    classes = choose_classes(all_classes, num_classes, seed)
    source_index = [all_classes.index(c) for c in classes]

    class _Subset(ImageFolder):
        def find_classes(self, directory: str):
            return classes, {c: i for i, c in enumerate(classes)}

    def folder(path: str, transform: Optional[Callable]) -> ImageFolder:
        try:
            return _Subset(path, transform=transform)
        except (FileNotFoundError, OSError) as e:
            raise DataError(f"imagefolder: cannot read {path!r}: {e}") from None

    if holdout is None:
        val_dir = os.path.join(root, "val")
        if not os.path.isdir(val_dir):
            raise DataError(f"imagefolder: {val_dir!r} is not a folder; give it, or set holdout to carve a "
                            "validation split from train")
        missing = sorted(set(classes) - set(_class_dirs(val_dir)))
        if missing:
            raise DataError(f"imagefolder: {val_dir!r} lacks class folders {missing[:5]}")
        return folder(train_dir, train_transform), folder(val_dir, val_transform), classes, source_index

    full_train = folder(train_dir, train_transform)
    full_val = folder(train_dir, val_transform)
    tr, va = holdout_split(len(full_train), holdout, seed)
    return Subset(full_train, tr), Subset(full_val, va), classes, source_index


def holdout_split(n: int, holdout: Union[int, float], seed: int) -> Tuple[List[int], List[int]]:
    """Indices (train, held_out) of a seeded random split of ``n`` items; ``holdout`` is a count
    (int >= 1) or a fraction in (0, 1)."""
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)):
        raise DataError(f"holdout: {holdout!r} is not a count or a fraction")
    k = int(round(holdout * n)) if isinstance(holdout, float) and holdout < 1.0 else int(holdout)
    if isinstance(holdout, float) and not (0.0 < holdout < 1.0) and holdout != int(holdout):
        raise DataError(f"holdout: {holdout!r} is neither a fraction in (0, 1) nor a whole count")
    if k < 1 or k >= n:
        raise DataError(f"holdout: {holdout!r} leaves {n - k} of {n} images for training; need 1..{n - 1} held out")
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(perm[k:].tolist()), sorted(perm[:k].tolist())


# --------------------------------------------------------------------------------------------
# Transforms and the entry point


def tensor_transforms(resolution: int, native: int, mean: Sequence[float], std: Sequence[float],
                      train: bool, augment: bool = True):
    """Transforms for uint8 CHW tensors of side ``native``: [random crop with 4-px padding and
    horizontal flip], resize to ``resolution`` when it differs, scale to [0, 1], normalise."""
    from torchvision.transforms import v2

    ops: List[Any] = []
    if train and augment:
        pad = max(1, native // 8)
        ops += [v2.RandomCrop(native, padding=pad, padding_mode="reflect"), v2.RandomHorizontalFlip()]
    if resolution != native:
        ops.append(v2.Resize((resolution, resolution), antialias=True))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(ops)


def imagefolder_transforms(resolution: int, train: bool, augment: bool = True):
    """ImageNet-style: RandomResizedCrop + flip for training, resize to res/0.875 + center crop for eval."""
    from torchvision.transforms import v2

    if train and augment:
        ops = [v2.RandomResizedCrop(resolution, antialias=True), v2.RandomHorizontalFlip()]
    else:
        ops = [v2.Resize(int(round(resolution / 0.875)), antialias=True), v2.CenterCrop(resolution)]
    return v2.Compose([v2.ToImage(), *ops, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _limit(ds: Dataset, n: Optional[int], seed: int) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    idx = np.random.default_rng(seed).permutation(len(ds))[:n]
    return Subset(ds, sorted(idx.tolist()))


def build_datasets(settings: Any, resolution: int) -> Tuple[Dataset, Dataset, int]:
    """``(train, val, num_classes)`` for a ``TrainSettings`` at image side ``resolution``.

    The validation set is held-out data, never the training images: the embedded set's own
    val split, CIFAR-10's test batch or ImageFolder's val folder, or, with ``settings.holdout``,
    a seeded split carved from train. The returned train/val datasets may carry
    ``source_class_indices`` (ImageFolder with N random classes) for reading a teacher's logits.
    """
    from .trainer import TrainSettings  # the settings type lives with the trainer

    if not isinstance(settings, TrainSettings):
        settings = TrainSettings.from_dict(settings)
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8:
        raise DataError(f"resolution: {resolution!r} is not an integer >= 8")
    kind, seed = settings.dataset, settings.data_seed
    source_index = None
    if kind == "embedded":
        tr_t = tensor_transforms(resolution, 32, EMBEDDED_MEAN, EMBEDDED_STD, True, settings.augment)
        va_t = tensor_transforms(resolution, 32, EMBEDDED_MEAN, EMBEDDED_STD, False)
        if settings.holdout is None:
            train = make_embedded_dataset("train", settings.embedded_train_size, settings.embedded_val_size, seed, tr_t)
            val = make_embedded_dataset("val", settings.embedded_train_size, settings.embedded_val_size, seed, va_t)
        else:
            base = make_embedded_dataset("train", settings.embedded_train_size, settings.embedded_val_size, seed)
            tr, va = holdout_split(len(base), settings.holdout, seed)
            train, val = Subset(base.with_transform(tr_t), tr), Subset(base.with_transform(va_t), va)
        classes = list(EMBEDDED_CLASSES)
    elif kind == "cifar10":
        if settings.data_dir is None:
            raise DataError("data_dir: required for dataset 'cifar10' (the folder holding cifar-10-batches-py)")
        if settings.download:
            _download_cifar10(settings.data_dir)
        tr_t = tensor_transforms(resolution, 32, CIFAR10_MEAN, CIFAR10_STD, True, settings.augment)
        va_t = tensor_transforms(resolution, 32, CIFAR10_MEAN, CIFAR10_STD, False)
        train, val = cifar10_datasets(settings.data_dir, tr_t, va_t)
        classes = train.classes
        if settings.holdout is not None:
            tr, va = holdout_split(len(train), settings.holdout, seed)
            train, val = Subset(train, tr), Subset(train.with_transform(va_t), va)
    elif kind == "imagefolder":
        if settings.data_dir is None:
            raise DataError("data_dir: required for dataset 'imagefolder' (root with train/ [and val/])")
        train, val, classes, source_index = imagefolder_datasets(
            settings.data_dir, settings.num_classes, settings.holdout, seed,
            imagefolder_transforms(resolution, True, settings.augment), imagefolder_transforms(resolution, False))
    else:
        raise DataError(f"dataset: {kind!r} is not one of {list(DATASETS)}")
    train = _limit(train, settings.max_train_images, seed)
    val = _limit(val, settings.max_val_images, seed + 1)
    if source_index is not None:
        for ds in (train, val):
            ds.source_class_indices = source_index
    return train, val, len(classes)


def _download_cifar10(root: str) -> None:
    """Fetch CIFAR-10 with torchvision (only for machines that can reach the internet)."""
    folder = os.path.join(os.path.expanduser(root), "cifar-10-batches-py")
    if os.path.isdir(folder):
        return
    from torchvision.datasets import CIFAR10

    log.info("downloading CIFAR-10 into %s", root)
    CIFAR10(root, train=True, download=True)
