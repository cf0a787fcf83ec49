"""Input checks for the torchvision detectors, before torchvision sees the input (where a NaN
box becomes a NaN loss and a 4-channel image a shape error deep in a conv).

Each failure is a DetectionError naming the image (its index in the batch and, when the
target carries one, its ``image_id``), the field, the bad value and what is allowed.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch

from ..core import DetectionError

MIN_SIDE = 8          # pixels: smaller images have no stride-32 feature left
MAX_SIDE = 8192       # pixels
MAX_ASPECT = 20.0     # longer side / shorter side (COCO's most elongated images are ~7)


def _where(i: int, targets: Optional[Sequence[Mapping[str, Any]]]) -> str:
    image_id = None
    if targets is not None and i < len(targets) and isinstance(targets[i], Mapping):
        image_id = targets[i].get("image_id")
        if isinstance(image_id, torch.Tensor) and image_id.numel() == 1:
            image_id = int(image_id)
    return f"images[{i}]" + (f" (image_id {image_id})" if image_id is not None else "")


def check_images(images: Sequence[torch.Tensor], targets: Optional[Sequence[Mapping[str, Any]]] = None) -> None:
    """A list of finite float C x H x W tensors with C = 3 and sides within bounds."""
    if isinstance(images, torch.Tensor) or not isinstance(images, Sequence) or not images:
        raise DetectionError(f"images: {type(images).__name__} is not a non-empty list of 3 x H x W tensors")
    if targets is not None and len(targets) != len(images):
        raise DetectionError(f"targets: {len(targets)} target(s) for {len(images)} image(s); give one per image")
    for i, img in enumerate(images):
        where = _where(i, targets)
        if not isinstance(img, torch.Tensor):
            raise DetectionError(f"{where}: {type(img).__name__} is not a tensor")
        if img.dim() != 3 or img.shape[0] != 3:
            raise DetectionError(f"{where}: shape {tuple(img.shape)} is not 3 x H x W (RGB; convert grey or "
                                 "RGBA images to RGB first)")
        if not img.is_floating_point():
            raise DetectionError(f"{where}: dtype {img.dtype} is not floating point (scale uint8 images to [0, 1])")
        h, w = int(img.shape[1]), int(img.shape[2])
        if min(h, w) < MIN_SIDE or max(h, w) > MAX_SIDE or max(h, w) / min(h, w) > MAX_ASPECT:
            raise DetectionError(f"{where}: size {h} x {w} is outside the supported range (each side "
                                 f"{MIN_SIDE}..{MAX_SIDE} px, aspect ratio at most {MAX_ASPECT:g})")
        if not torch.isfinite(img).all():
            raise DetectionError(f"{where}: has NaN or infinite pixel values")


def check_targets(targets: Sequence[Mapping[str, Any]], images: Sequence[torch.Tensor], num_classes: int,
                  masks: bool = False) -> None:
    """Training targets: ``boxes`` N x 4 finite xyxy with x2 > x1 and y2 > y1, ``labels`` N
    integers in 1..num_classes-1 (0 is the background), ``masks`` N x H x W when ``masks``."""
    for i, t in enumerate(targets):
        where = _where(i, targets)
        if not isinstance(t, Mapping):
            raise DetectionError(f"targets[{i}]: {type(t).__name__} is not a dict with 'boxes' and 'labels'")
        for key in ("boxes", "labels") + (("masks",) if masks else ()):
            if key not in t:
                raise DetectionError(f"{where}.{key}: missing (a training target needs boxes, labels"
                                     f"{', masks' if masks else ''})")
            if not isinstance(t[key], torch.Tensor):
                raise DetectionError(f"{where}.{key}: {type(t[key]).__name__} is not a tensor")
        boxes, labels = t["boxes"], t["labels"]
        if boxes.dim() != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
            raise DetectionError(f"{where}.boxes: shape {tuple(boxes.shape)} dtype {boxes.dtype} is not N x 4 float "
                                 "(x1, y1, x2, y2)")
        if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
            raise DetectionError(f"{where}.labels: shape {tuple(labels.shape)} dtype {labels.dtype} is not N integers")
        if labels.shape[0] != boxes.shape[0]:
            raise DetectionError(f"{where}.labels: {labels.shape[0]} label(s) for {boxes.shape[0]} box(es); "
                                 "give one label per box")
        bad = (~torch.isfinite(boxes)).any(1).nonzero().flatten()
        if bad.numel():
            k = int(bad[0])
            raise DetectionError(f"{where}.boxes[{k}]: {boxes[k].tolist()} is not finite")
        bad = ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).nonzero().flatten()
        if bad.numel():
            k = int(bad[0])
            raise DetectionError(f"{where}.boxes[{k}]: {boxes[k].tolist()} has no positive width and height "
                                 "(x1 < x2 and y1 < y2, xyxy pixels)")
        bad = ((labels < 1) | (labels >= num_classes)).nonzero().flatten()
        if bad.numel():
            k = int(bad[0])
            raise DetectionError(f"{where}.labels[{k}]: {int(labels[k])} is not a class of this model (1.."
                                 f"{num_classes - 1}; 0 is the background)")
        if masks:
            m, img = t["masks"], images[i]
            if m.dim() != 3 or m.shape[0] != boxes.shape[0] or tuple(m.shape[1:]) != tuple(img.shape[1:]):
                raise DetectionError(f"{where}.masks: shape {tuple(m.shape)} is not {boxes.shape[0]} x "
                                     f"{img.shape[1]} x {img.shape[2]} (one mask per box, the image's size)")
