"""ImageFolder datasets (ImageNet layout): ``root/train/<class>/*`` (+ ``root/val/<class>/*``),
optionally restricted to N random classes (the paper searched on 200 random ImageNet classes)
and with a held-out split carved from train (the paper held out 10K training images).

Bad files are found when the dataset is built, never mid-epoch. ``scan_image_folder`` walks each
kept class folder (following symlinks, but each real folder once, so a symlink loop adds nothing)
and opens every image: a zero-byte file, a dangling symlink, a file PIL cannot identify, a
truncated or corrupt image (decoded once, JPEGs at 1/8 scale, which still reads every byte of
the scan), or an image of more than ``MAX_IMAGE_PIXELS`` pixels (a decompression bomb) is a
``DataError`` listing the bad files (the first ten, and how many in all). Policy: fail, never
skip: a silently smaller dataset would change what a search measures. Remove or fix the files.
"""

from __future__ import annotations

import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Subset

from .common import holdout_split
from .registry import DataError, DatasetSplits, register_dataset

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Largest image accepted (width x height): 8K x 6K. Larger ones are refused as decompression
# bombs (a 14000 x 14000 PNG is a few KB on disk and 588 MB once decoded).
MAX_IMAGE_PIXELS = 50_000_000
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


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


def check_image(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Optional[str]:
    """Why the image at ``path`` cannot be trained on, or None when it decodes."""
    from PIL import Image

    if not os.path.exists(path):
        return "dangling symlink" if os.path.islink(path) else "missing"
    try:
        if os.path.getsize(path) == 0:
            return "zero-byte file"
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    return f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (decompression bomb?)"
                img.draft("RGB", (max(1, w // 8), max(1, h // 8)))  # JPEG: decode at 1/8 scale
                img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return f"decompression bomb ({e})"
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # PIL's errors for unreadable images
        return f"cannot decode ({type(e).__name__}: {e})"
    return None


def _walk_once(top: str, pruned: List[str]):
    """``os.walk(top, followlinks=True)`` that enters every real folder once (a symlink back to a
    folder already walked, e.g. a loop, is not entered again); pruned entries go to ``pruned``."""
    seen = set()
    for root, dirs, files in os.walk(top, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            pruned.append(root)
            dirs[:] = []
            continue
        seen.add(real)
        keep = []
        for d in dirs:
            if os.path.realpath(os.path.join(root, d)) in seen:
                pruned.append(os.path.join(root, d))
            else:
                keep.append(d)
        dirs[:] = keep
        yield root, dirs, files


def scan_image_folder(directory: str, class_to_idx: Dict[str, int], max_pixels: int = MAX_IMAGE_PIXELS,
                      workers: Optional[int] = None) -> List[Tuple[str, int]]:
    """The ``(path, class index)`` samples of ``directory/<class>/**`` (image extensions only, in
    torchvision's ImageFolder order), after checking that every image decodes (``check_image``).
    DataError listing the bad files if any is bad (see the module docstring)."""
    samples: List[Tuple[str, int]] = []
    pruned: List[str] = []
    for cls in sorted(class_to_idx):
        target = os.path.join(directory, cls)
        if not os.path.isdir(target):
            continue
        for root, _, names in sorted(_walk_once(target, pruned)):
            for name in sorted(names):
                if name.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.join(root, name), class_to_idx[cls]))
    if pruned:
        log.warning("imagefolder %s: %d symlinked folder(s) lead back to folders already scanned (a loop?); "
                    "their images are counted once: %s", directory, len(pruned), pruned[:3])
    workers = workers or min(16, max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes without the GIL
        problems = list(pool.map(lambda s: check_image(s[0], max_pixels), samples, chunksize=64))
    bad = [(path, why) for (path, _), why in zip(samples, problems) if why is not None]
    if bad:
        listed = "; ".join(f"{p}: {why}" for p, why in bad[:10])
        raise DataError(f"imagefolder: {len(bad)} of {len(samples)} image(s) under {directory!r} cannot be read "
                        f"(remove or fix them): {listed}{' ...' if len(bad) > 10 else ''}")
    empty = [c for c, i in class_to_idx.items() if not any(t == i for _, t in samples)]
    if empty:
        raise DataError(f"imagefolder: class folder(s) {empty[:5]} under {directory!r} hold no image "
                        f"(extensions {list(IMG_EXTENSIONS)})")
    return samples


def imagefolder_datasets(root: str, num_classes: Optional[int] = None, holdout: Union[int, float, None] = None,
                         seed: int = 0, train_transform: Optional[Callable] = None,
                         val_transform: Optional[Callable] = None, max_pixels: int = MAX_IMAGE_PIXELS):
    """ImageNet-layout folders: ``root/train/<class>/<image>`` and, unless ``holdout`` is given,
    ``root/val/<class>/<image>``. ``num_classes``: keep N random classes (seeded); labels are
    0..N-1 in sorted class order. ``holdout``: carve the validation set from train instead (a
    count of images, or a fraction in (0, 1)), chosen at random with ``seed``.

    Every image of the kept classes is checked when the dataset is built (``scan_image_folder``):
    a bad file is a DataError naming it, not a crash in the middle of an epoch.

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

        def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None,
                         allow_empty=False):
            return scan_image_folder(directory, class_to_idx, max_pixels)

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


def imagefolder_transforms(resolution: int, train: bool, augment: bool = True):
    """ImageNet-style: RandomResizedCrop + flip for training, resize to res/0.875 + center crop for eval."""
    from torchvision.transforms import v2

    if train and augment:
        ops = [v2.RandomResizedCrop(resolution, antialias=True), v2.RandomHorizontalFlip()]
    else:
        ops = [v2.Resize(int(round(resolution / 0.875)), antialias=True), v2.CenterCrop(resolution)]
    return v2.Compose([v2.ToImage(), *ops, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])



@register_dataset("imagefolder", in_memory=False, needs_dir=True)
def build_imagefolder(settings: Any, resolution: int) -> DatasetSplits:
    if settings.data_dir is None:
        raise DataError("data_dir: required for dataset 'imagefolder' (root with train/ [and val/])")
    train, val, classes, source_index = imagefolder_datasets(
        settings.data_dir, settings.num_classes, settings.holdout, settings.data_seed,
        imagefolder_transforms(resolution, True, settings.augment), imagefolder_transforms(resolution, False))
    return DatasetSplits(train, val, classes, source_index)
