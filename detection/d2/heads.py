"""detectron2 heads fitted to FBNet (registered on import).

* RPN_HEAD_REGISTRY ``FBNetRPNHead``: FBNet blocks (the trunk's last row repeated, as the
  authors do) shared over levels, then 1x1 objectness / delta convs.
* ROI_BOX_HEAD_REGISTRY ``FBNetBoxHead``: the arch's stride-32 stage(s) on pooled RoI
  features (C4 "res5" role) + global average pooling. C4: only those stages are built,
  with their pretrained weights from the backbone's checkpoint read; FPN: rebuilt for the
  FPN's channels.
* ROI_MASK_HEAD_REGISTRY ``FBNetMaskHead``: FBNet blocks on 14x14 RoI features upsampling
  to 28x28, 1x1 predictor (Mask R-CNN C4 and FPN).
* ROI_KEYPOINT_HEAD_REGISTRY ``FBNetKeypointHead``: d2go's FBNet keypoint head -- FBNet
  blocks on pooled RoI features (the arch's keypoint rows, else its mask rows), then an
  inverted-residual predictor without norm that upsamples x2 (Keypoint R-CNN).
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.modeling.proposal_generator.rpn import RPN_HEAD_REGISTRY
from detectron2.modeling.roi_heads.box_head import ROI_BOX_HEAD_REGISTRY
from detectron2.modeling.roi_heads.keypoint_head import ROI_KEYPOINT_HEAD_REGISTRY, BaseKeypointRCNNHead
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, BaseMaskRCNNHead

from ..core import (DetectionError, KeypointBody, LightRPNHead, MaskBody, StagesBoxHead, box_head_from_rows,
                    box_head_from_stages, c4_split, keypoint_rows, mask_rows, rpn_rows)
from .backbone import arch_from_cfg, norm_layer


def _head_norm(cfg):
    return norm_layer(cfg.MODEL.FBNET.HEAD_NORM, "MODEL.FBNET.HEAD_NORM") or nn.BatchNorm2d


def _variant(cfg) -> str:
    return "fpn" if "FPN" in cfg.MODEL.BACKBONE.NAME else "c4"


@RPN_HEAD_REGISTRY.register()
class FBNetRPNHead(LightRPNHead):
    @configurable
    def __init__(self, *, in_channels: int, rows, num_anchors: int, box_dim: int = 4, divisor: int = 8,
                 norm_layer=nn.BatchNorm2d):
        super().__init__(in_channels, rows, num_anchors, box_dim, divisor, norm_layer)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise DetectionError(f"MODEL.RPN.IN_FEATURES: the RPN head is shared over levels, which need equal "
                                 f"channels; got {sorted(channels)}")
        anchors = build_anchor_generator(cfg, input_shape)
        if len(set(anchors.num_anchors)) != 1:
            raise DetectionError("MODEL.ANCHOR_GENERATOR: every level needs the same number of anchors")
        darch = arch_from_cfg(cfg)
        trunk, _ = c4_split(darch.spec)
        rows = rpn_rows(darch, _variant(cfg), trunk[-1], cfg.MODEL.FBNET.RPN_REPEATS)
        return {"in_channels": channels.pop(), "rows": rows,
                "num_anchors": anchors.num_anchors[0], "box_dim": anchors.box_dim,
                "divisor": darch.spec.width_divisor, "norm_layer": _head_norm(cfg)}


def build_box_head(darch, variant: str, in_channels: int, norm: str = "BN", head_norm: str = "BN",
                   pretrained="") -> "_D2BoxHead":
    """The RoI box head: C4 -> the stride-32 stages alone, in the backbone's ``norm``, with
    their pretrained weights (ResNet's res5 role); FPN -> those rows rebuilt for the FPN's
    ``in_channels`` with ``head_norm`` (no pretrained weights fit them)."""
    trunk, box = c4_split(darch.spec)
    if variant == "c4":
        trunk_channels = darch.spec.stage_channels()[f"stage{trunk[-1]}"]
        if in_channels != trunk_channels:
            raise DetectionError(f"ROI_HEADS.IN_FEATURES: the C4 box head of {darch.spec.name!r} takes the trunk's "
                                 f"{trunk_channels} channels; got {in_channels}")
        head = box_head_from_stages(darch, box, norm_layer=norm_layer(norm), pretrained=pretrained, norm=norm)
    else:
        head = box_head_from_rows(in_channels, darch.spec, box,
                                  norm_layer(head_norm, "MODEL.FBNET.HEAD_NORM") or nn.BatchNorm2d)
    return _D2BoxHead(head)


@ROI_BOX_HEAD_REGISTRY.register()
def FBNetBoxHead(cfg, input_shape: ShapeSpec) -> nn.Module:
    """Returns a StagesBoxHead with ``output_shape`` (ShapeSpec(channels=C)) for FastRCNNOutputLayers."""
    f = cfg.MODEL.FBNET
    return build_box_head(arch_from_cfg(cfg), _variant(cfg), input_shape.channels, f.NORM, f.HEAD_NORM, f.PRETRAINED)


class _D2BoxHead(StagesBoxHead):
    def __init__(self, head: StagesBoxHead):
        super().__init__(head.roi_box_conv, head.out_channels)

    @property
    def output_shape(self) -> ShapeSpec:
        return ShapeSpec(channels=self.out_channels)


def _fbnet_head_args(cfg, input_shape: ShapeSpec, rows_of) -> dict:
    """The constructor arguments every FBNet RoI head shares: its rows (``rows_of(arch, variant)``),
    the arch's width divisor and the head norm."""
    darch = arch_from_cfg(cfg)
    return dict(input_shape=input_shape, rows=rows_of(darch, _variant(cfg)), divisor=darch.spec.width_divisor,
                norm_layer=_head_norm(cfg))


@ROI_MASK_HEAD_REGISTRY.register()
class FBNetMaskHead(BaseMaskRCNNHead):
    @configurable
    def __init__(self, input_shape: ShapeSpec, *, rows, num_classes: int, divisor: int = 8,
                 norm_layer=nn.BatchNorm2d, **kwargs):
        super().__init__(**kwargs)
        body = MaskBody(input_shape.channels, rows, num_classes, divisor, norm_layer)
        self.mask_feature, self.predictor = body.mask_feature, body.predictor

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        ret = super().from_config(cfg, input_shape)
        ret.update(_fbnet_head_args(cfg, input_shape, mask_rows),
                   num_classes=1 if cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        return ret

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.mask_feature(x))


@ROI_KEYPOINT_HEAD_REGISTRY.register()
class FBNetKeypointHead(BaseKeypointRCNNHead):
    """Keypoint R-CNN head with FBNet blocks (d2go's FBNetV2RoIKeypointHeadKPRCNNIRFPredictorNoUpscale):
    ``keypoint_feature`` rows on MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION RoI features, then
    ``predictor`` (core.KeypointPredictor). Heatmaps are 2x the body's output size
    (6x6 RoIs -> 3 -> 6 -> 12 -> 24 for the authors' FBNetV3-A-dsmask)."""

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, rows, num_keypoints: int, divisor: int = 8,
                 norm_layer=nn.BatchNorm2d, **kwargs):
        super().__init__(num_keypoints=num_keypoints, **kwargs)
        body = KeypointBody(input_shape.channels, rows, num_keypoints, divisor, norm_layer)
        self.keypoint_feature, self.predictor = body.keypoint_feature, body.predictor

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        ret = super().from_config(cfg, input_shape)
        ret.update(_fbnet_head_args(cfg, input_shape, keypoint_rows))
        return ret

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.keypoint_feature(x))
