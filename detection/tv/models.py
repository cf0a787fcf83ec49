"""Faster R-CNN and Mask R-CNN from ``torchvision.models.detection`` on FBNet trunks.

For users without detectron2. The same C4 / FPN split as the detectron2 adapters
(detection/core.py): C4 = trunk to stride 16 + light FBNet RPN head + the stride-32 stages
as RoI box head (pooler 6x6) + FBNet mask head (pooler 14x14 -> 28x28); FPN = every
stage into torchvision's FeaturePyramidNetwork.

    >>> from fbnet_zoo.detection.tv import fasterrcnn_fbnet
    >>> model = fasterrcnn_fbnet("FBNetV3-A", variant="c4", num_classes=81, min_size=320, max_size=320)

The detectors check their input before torchvision sees it (``checks.py``): images must be
finite 3-channel tensors of a sane size, training targets finite boxes with positive
extent and labels in 1..num_classes-1, one per box; a DetectionError names the image
(index and image_id), the field and the bad value.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from fbnet_zoo.errors import check_int

from ..core import (VARIANTS, DetectionError, FBNetTrunk, LightRPNHead, MaskBody,
                    box_head_from_model, box_head_from_rows, build_fbnet, c4_feature, c4_split, check_fpn_features,
                    default_fpn_features, mask_rows, resolve_arch, rpn_rows, same_padding)
from .checks import check_images, check_targets

logger = logging.getLogger(__name__)

__all__ = ["FBNetFasterRCNN", "FBNetMaskRCNN", "fasterrcnn_fbnet", "maskrcnn_fbnet"]

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


class _CheckedInput:
    """Checks images (and, in training, targets) at our boundary, then runs torchvision's forward."""

    def forward(self, images, targets=None):
        num_classes = self.roi_heads.box_predictor.cls_score.out_features
        check_images(images, targets)
        if targets is not None:
            check_targets(targets, images, num_classes, masks=self.roi_heads.has_mask())
        return super().forward(images, targets)


class FBNetFasterRCNN(_CheckedInput, FasterRCNN):
    """torchvision's FasterRCNN whose forward checks its input first (``checks.py``)."""


class FBNetMaskRCNN(_CheckedInput, MaskRCNN):
    """torchvision's MaskRCNN whose forward checks its input first (``checks.py``)."""


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
    # torchvision counts the background as class 0: 0 built a model that cannot train, -5 was torch's error
    check_int("num_classes (background included)", num_classes, 2, error=DetectionError)
    check_int("fpn_channels", fpn_channels, 1, error=DetectionError)
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
        det: nn.Module = FBNetFasterRCNN(backbone, num_classes=None, **common)
    else:
        rows = mask_rows(darch, variant)
        body = MaskBody(mask_in, rows, num_classes, divisor, head_norm)
        common.update(mask_roi_pool=MultiScaleRoIAlign(names, output_size=mask_pooler, sampling_ratio=0),
                      mask_head=_MaskHead(body.mask_feature), mask_predictor=body.predictor)
        det = FBNetMaskRCNN(backbone, num_classes=None, **common)
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


