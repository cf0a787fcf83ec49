"""The embedded default dataset: a procedurally generated 10-class RGB image set (32x32),
made in memory from a fixed seed in well under a second: no download, identical on every
machine. Each class is a shape (disk, square, triangle, ring, plus, diamond, horizontal bars,
vertical bars, checker, two dots) drawn at a random place, size, rotation and colour on a
textured, noisy background, with a smaller distractor shape of another class and a random
occluding patch. Colour is only a weak cue (per-class hue means overlap heavily), so a network
has to learn shapes, and small networks / short schedules land at clearly different accuracies.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Subset

from .common import TensorImageDataset, holdout_split, tensor_transforms
from .registry import DataError, DatasetSplits, register_dataset

EMBEDDED_MEAN = (0.5, 0.5, 0.5)
EMBEDDED_STD = (0.25, 0.25, 0.25)
EMBEDDED_CLASSES = ("disk", "square", "triangle", "ring", "plus", "diamond", "hbars", "vbars",
                    "checker", "two_dots")


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
    img += 0.12 * texture * rng.uniform(0.0, 1.0, (n, 1, 1, 1)).astype(f32)

    def draw(classes: np.ndarray, scale_lo: float, scale_hi: float, img: np.ndarray) -> None:
        scale = rng.uniform(scale_lo, scale_hi, n).astype(f32) * size / 2
        cx = rng.uniform(scale, size - scale).astype(f32)
        cy = rng.uniform(scale, size - scale).astype(f32)
        angle = rng.uniform(-0.45, 0.45, n).astype(f32)
        # Colour: per-class hue means spread over the circle, but with a wide spread, so hue
        # alone predicts the class only weakly.
        hue = (classes / len(EMBEDDED_CLASSES) + rng.normal(0.0, 0.22, n)) % 1.0
        rgb = _hsv_to_rgb(hue, rng.uniform(0.3, 1.0, n), rng.uniform(0.35, 1.0, n)).astype(f32)
        u, v = _rotated_coords(n, size, cx, cy, scale, angle)
        mask = np.zeros((n, size, size), dtype=bool)
        for k in range(len(EMBEDDED_CLASSES)):
            idx = np.nonzero(classes == k)[0]
            if len(idx):
                mask[idx] = _shape_mask(k, u[idx], v[idx])
        shade = 0.85 + 0.15 * rng.uniform(-1, 1, (n, 1, 1, 1)).astype(f32) * (u[:, None] / 2)
        m = mask[:, None].astype(f32)
        img *= 1.0 - m
        img += m * rgb[:, :, None, None] * shade

    # A small distractor of another class first, then the labelled shape on top.
    distract = (labels + rng.integers(1, len(EMBEDDED_CLASSES), n)) % len(EMBEDDED_CLASSES)
    draw(distract, 0.22, 0.36, img)
    draw(labels, 0.42, 0.85, img)
    # Occluding patch: a random rectangle of random colour in about half of the images.
    ox, oy = rng.integers(0, size, n), rng.integers(0, size, n)
    ow, oh = rng.integers(3, size // 3, n), rng.integers(3, size // 3, n)
    occluded = rng.uniform(size=n) < 0.5
    ar = np.arange(size)
    box = ((ar[None, None, :] >= ox[:, None, None]) & (ar[None, None, :] < (ox + ow)[:, None, None])
           & (ar[None, :, None] >= oy[:, None, None]) & (ar[None, :, None] < (oy + oh)[:, None, None])
           & occluded[:, None, None])
    ocol = rng.uniform(0, 1, (n, 3, 1, 1)).astype(f32)
    img = np.where(box[:, None], ocol, img)
    img += rng.normal(0.0, 1.0, img.shape).astype(f32) * rng.uniform(0.03, 0.12, (n, 1, 1, 1)).astype(f32)
    images = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


_EMBEDDED_CACHE: Dict[Tuple[int, int, int], Tuple[torch.Tensor, torch.Tensor]] = {}
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



@register_dataset("embedded", in_memory=True, needs_dir=False)
def build_embedded(settings: Any, resolution: int) -> DatasetSplits:
    """The generated train / val splits, or with ``settings.holdout`` a split carved from train."""
    seed = settings.data_seed
    tr_t = tensor_transforms(resolution, 32, EMBEDDED_MEAN, EMBEDDED_STD, True, settings.augment)
    va_t = tensor_transforms(resolution, 32, EMBEDDED_MEAN, EMBEDDED_STD, False)
    sizes = (settings.embedded_train_size, settings.embedded_val_size)
    if settings.holdout is None:
        train = make_embedded_dataset("train", *sizes, seed, tr_t)
        val = make_embedded_dataset("val", *sizes, seed, va_t)
    else:
        base = make_embedded_dataset("train", *sizes, seed)
        tr, va = holdout_split(len(base), settings.holdout, seed)
        train, val = Subset(base.with_transform(tr_t), tr), Subset(base.with_transform(va_t), va)
    return DatasetSplits(train, val, list(EMBEDDED_CLASSES))
