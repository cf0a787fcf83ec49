"""Pieces every dataset shares: in-memory uint8 image sets, seeded splits and subsets, tensor
transforms."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .registry import DataError

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



def limit(ds: Dataset, n: Optional[int], seed: int) -> Dataset:
    """A seeded random subset of ``n`` items of ``ds`` (all of it when ``n`` is None or larger)."""
    if n is None or n >= len(ds):
        return ds
    idx = np.random.default_rng(seed).permutation(len(ds))[:n]
    return Subset(ds, sorted(idx.tolist()))

