"""Faster R-CNN and Mask R-CNN from ``torchvision.models.detection`` on FBNet trunks.

For users without detectron2. The same C4 / FPN split as the detectron2 adapters
(detection/core.py): C4 = trunk to stride 16 + light FBNet RPN head + the stride-32 stages
as RoI box head (pooler 6x6) + FBNet mask head (pooler 14x14 -> 28x28); FPN = every
stage into torchvision's FeaturePyramidNetwork.

    >>> from fbnet_zoo.detection.torchvision import fasterrcnn_fbnet
    >>> model = fasterrcnn_fbnet("FBNetV3-A", variant="c4", num_classes=81, min_size=320, max_size=320)

(This module is ``fbnet_zoo.detection.torchvision``; imports are absolute, so the real
``torchvision`` package is the one imported here and everywhere else.)
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

import torchvision  # noqa: F401  (the real package: absolute import)
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .core import (VARIANTS, DetectionError, FBNetTrunk, LightRPNHead, MaskBody,
                   box_head_from_model, box_head_from_rows, build_fbnet, c4_feature, c4_split, check_fpn_features,
                   default_fpn_features, mask_rows, resolve_arch, rpn_rows, same_padding)

logger = logging.getLogger(__name__)

__all__ = ["fasterrcnn_fbnet", "maskrcnn_fbnet", "CocoDetection", "collate", "train_steps", "evaluate_coco"]

_SIZES = (32, 64, 128, 256, 512)
_RATIOS = (0.5, 1.0, 2.0)


class _C4Backbone(nn.Module):
    def __init__(self, trunk: FBNetTrunk):
        super().__init__()
        self.body = trunk
        self.out_channels = trunk.features[-1].channels

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.body(x)


class _FPNBackbone(nn.Module):
    def __init__(self, trunk: FBNetTrunk, out_channels: int):
        super().__init__()
        self.body = trunk
        self.fpn = FeaturePyramidNetwork([f.channels for f in trunk.features], out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.fpn(self.body(x))


class _MaskHead(nn.Module):
    """torchvision splits the mask branch into head + predictor; our body is the head."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.mask_feature = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask_feature(x)


def _norm_layer(norm: str):
    if norm in ("BN", "", None):
        return None
    if norm == "FrozenBN":
        from torchvision.ops.misc import FrozenBatchNorm2d

        return FrozenBatchNorm2d
    if norm == "SyncBN":
        return nn.SyncBatchNorm
    raise DetectionError(f"norm: {norm!r} is not one of ['BN', 'FrozenBN', 'SyncBN']")


def _build(arch: Union[str, Any], variant: str, num_classes: int, masks: bool, pretrained_backbone: Union[bool, str],
           norm: str, freeze_at: int, fpn_channels: int, fpn_features: Optional[Sequence[str]],
           width_divisor: Optional[int], width_multiplier: float, rpn_repeats: int, box_pooler: int,
           mask_pooler: int, **kwargs: Any) -> nn.Module:
    if variant not in VARIANTS:
        raise DetectionError(f"variant: {variant!r} is not one of {list(VARIANTS)}")
    darch = resolve_arch(arch, width_divisor, width_multiplier)
    spec = darch.spec
    norm_layer = _norm_layer(norm)
    divisor = spec.width_divisor
    head_norm = nn.BatchNorm2d if norm_layer is None else norm_layer
    trunk_stages, box_stages = c4_split(spec)
    if variant == "c4":
        model = build_fbnet(darch, norm_layer=norm_layer, pretrained=pretrained_backbone, norm=norm)
        names = [c4_feature(spec)]
        trunk = FBNetTrunk(model, names)
        backbone: nn.Module = _C4Backbone(trunk)
        anchors = AnchorGenerator((_SIZES,), (_RATIOS,))
        rpn_head = LightRPNHead(backbone.out_channels, rpn_rows(darch, "c4", trunk_stages[-1], rpn_repeats),
                                anchors.num_anchors_per_location()[0], 4, divisor, head_norm)
        box_head = box_head_from_model(model, box_stages)
        mask_in = backbone.out_channels
    else:
        wanted = list(fpn_features) if fpn_features else default_fpn_features(spec)
        check_fpn_features(spec, wanted)
        model = build_fbnet(same_padding(darch), norm_layer=norm_layer, pretrained=pretrained_backbone, norm=norm)
        trunk = FBNetTrunk(model, wanted)
        backbone = _FPNBackbone(trunk, fpn_channels)
        names = wanted
        anchors = AnchorGenerator(tuple((s,) for s in _SIZES[: len(wanted) + 1]), (_RATIOS,) * (len(wanted) + 1))
        rows = rpn_rows(darch, "fpn", trunk_stages[-1], rpn_repeats)
        rpn_head = LightRPNHead(fpn_channels, rows, anchors.num_anchors_per_location()[0], 4, divisor, head_norm)
        box_head = box_head_from_rows(fpn_channels, spec, box_stages, head_norm)
        mask_in = fpn_channels
    box_pool = MultiScaleRoIAlign(names, output_size=box_pooler, sampling_ratio=0)
    common = dict(rpn_anchor_generator=anchors, rpn_head=rpn_head, box_roi_pool=box_pool, box_head=box_head,
                  box_predictor=FastRCNNPredictor(box_head.out_channels, num_classes), **kwargs)
    if not masks:
        det: nn.Module = FasterRCNN(backbone, num_classes=None, **common)
    else:
        rows = mask_rows(darch, variant)
        body = MaskBody(mask_in, rows, num_classes, divisor, head_norm)
        common.update(mask_roi_pool=MultiScaleRoIAlign(names, output_size=mask_pooler, sampling_ratio=0),
                      mask_head=_MaskHead(body.mask_feature), mask_predictor=body.predictor)
        det = MaskRCNN(backbone, num_classes=None, **common)
    if freeze_at > 0:
        trunk.freeze(freeze_at)
    det.fbnet_spec = spec  # type: ignore[attr-defined]
    return det


def fasterrcnn_fbnet(arch: Union[str, Any] = "FBNetV3-A", variant: str = "c4", num_classes: int = 91,
                     pretrained_backbone: Union[bool, str] = False, norm: str = "BN", freeze_at: int = 0,
                     fpn_channels: int = 128, fpn_features: Optional[Sequence[str]] = None,
                     width_divisor: Optional[int] = None, width_multiplier: float = 1.0, rpn_repeats: int = -1,
                     box_pooler: int = 6, **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN (torchvision) with an FBNet C4 or FPN trunk. ``num_classes`` counts the
    background (torchvision's convention). ``kwargs`` go to FasterRCNN (min_size, max_size,
    rpn_*/box_* settings)."""
    return _build(arch, variant, num_classes, False, pretrained_backbone, norm, freeze_at, fpn_channels,
                  fpn_features, width_divisor, width_multiplier, rpn_repeats, box_pooler, 14, **kwargs)


def maskrcnn_fbnet(arch: Union[str, Any] = "FBNetV3-A", variant: str = "c4", num_classes: int = 91,
                   pretrained_backbone: Union[bool, str] = False, norm: str = "BN", freeze_at: int = 0,
                   fpn_channels: int = 128, fpn_features: Optional[Sequence[str]] = None,
                   width_divisor: Optional[int] = None, width_multiplier: float = 1.0, rpn_repeats: int = -1,
                   box_pooler: int = 6, mask_pooler: int = 14, **kwargs: Any) -> MaskRCNN:
    """Mask R-CNN (torchvision) with an FBNet trunk; the mask head maps 14x14 RoIs to 28x28."""
    return _build(arch, variant, num_classes, True, pretrained_backbone, norm, freeze_at, fpn_channels,
                  fpn_features, width_divisor, width_multiplier, rpn_repeats, box_pooler, mask_pooler, **kwargs)


# --------------------------------------------------------------------------- data + loops
class CocoDetection(torch.utils.data.Dataset):
    """COCO instances as torchvision detection targets (boxes xyxy, labels 1..K, masks)."""

    def __init__(self, json_path: str, image_root: str, masks: bool = False):
        from pycocotools.coco import COCO

        self.coco = COCO(json_path) if isinstance(json_path, str) else json_path
        self.image_root = image_root
        self.masks = masks
        self.ids = sorted(self.coco.getImgIds())
        self.cat_ids = sorted(self.coco.getCatIds())
        self.label_of = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.cat_of = {v: k for k, v in self.label_of.items()}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        from PIL import Image

        img_id = self.ids[i]
        info = self.coco.loadImgs(img_id)[0]
        with Image.open(os.path.join(self.image_root, info["file_name"])) as im:
            image = torch.from_numpy(__import__("numpy").asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
        anns = [a for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=img_id)) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        target = {"boxes": boxes, "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns],
                                                         dtype=torch.int64),
                  "image_id": torch.tensor(img_id)}
        if self.masks:
            target["masks"] = torch.stack([torch.from_numpy(self.coco.annToMask(a)) for a in anns]) if anns \
                else torch.zeros((0, info["height"], info["width"]), dtype=torch.uint8)
        return image.float() / 255.0, target


def collate(batch: List[Tuple[torch.Tensor, Dict[str, torch.Tensor]]]):
    return tuple(zip(*batch))


def train_steps(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, steps: int,
                progress: bool = False) -> List[float]:
    """Run ``steps`` optimisation steps (cycling the loader); returns the total loss per step."""
    from tqdm import tqdm

    model.train()
    losses: List[float] = []
    it = iter(loader)
    for _ in tqdm(range(steps), disable=not progress, desc="train"):
        try:
            images, targets = next(it)
        except StopIteration:
            it = iter(loader)
            images, targets = next(it)
        loss_dict = model(list(images), list(targets))
        loss = sum(loss_dict.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} ({ {k: float(v) for k, v in loss_dict.items()} })")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def evaluate_coco(model: nn.Module, dataset: CocoDetection, batch_size: int = 4,
                  iou_types: Sequence[str] = ("bbox",)) -> Dict[str, Dict[str, float]]:
    """Run the model over the data set and score it with pycocotools' COCOeval.
    Returns {iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl"}} in percent."""
    import contextlib
    import io

    import numpy as np
    from pycocotools import mask as mask_util
    from pycocotools.cocoeval import COCOeval

    model.eval()
    results: List[Dict[str, Any]] = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        outputs = model([im for im, _ in items])
        for (_, target), out in zip(items, outputs):
            img_id = int(target["image_id"])
            boxes = out["boxes"].tolist()
            for k, (box, score, label) in enumerate(zip(boxes, out["scores"].tolist(), out["labels"].tolist())):
                r = {"image_id": img_id, "category_id": dataset.cat_of[int(label)],
                     "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": float(score)}
                if "masks" in out:
                    m = (out["masks"][k, 0] > 0.5).numpy().astype(np.uint8)
                    rle = mask_util.encode(np.asfortranarray(m))
                    rle["counts"] = rle["counts"].decode("ascii")
                    r["segmentation"] = rle
                results.append(r)
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    metrics: Dict[str, Dict[str, float]] = {}
    for iou_type in iou_types:
        if not results:
            metrics[iou_type] = {n: 0.0 for n in names}
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            dt = dataset.coco.loadRes([dict(r) for r in results])
            ev = COCOeval(dataset.coco, dt, iou_type)
            ev.evaluate(); ev.accumulate(); ev.summarize()
        metrics[iou_type] = {n: float(max(v, 0.0)) * 100 for n, v in zip(names, ev.stats[:6])}
    return metrics
