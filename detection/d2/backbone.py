"""detectron2 backbones on FBNet trunks (registered on import).

* ``FBNetC4Backbone``: stem through the last stride-16 stage, one output ``res4``.
* ``FBNetFPNBackbone``: every stage named in MODEL.FPN.IN_FEATURES (``res2``..``res5``) into
  detectron2's FPN (+ P6 by max pooling).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

import torch

from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from ..core import (VARIANTS, DetectionArch, DetectionError, FBNetTrunk, build_fbnet, c4_feature,
                    check_fpn_features, default_fpn_features, resolve_arch, same_padding)
from .config import NORMS


def norm_layer(norm: str, option: str = "MODEL.FBNET.NORM"):
    if norm not in NORMS:
        raise DetectionError(f"{option}: {norm!r} is not one of {list(NORMS)}")
    if norm in ("", "BN"):
        return None  # FBNet's own nn.BatchNorm2d
    return lambda c: get_norm(norm, c)


def arch_from_cfg(cfg) -> DetectionArch:
    f = cfg.MODEL.FBNET
    return resolve_arch(f.ARCH, f.WIDTH_DIVISOR or None, f.WIDTH_MULTIPLIER)


class FBNetBackbone(Backbone):
    """An FBNet trunk as a detectron2 Backbone with named outputs ``res{k}`` (stride 2**k).

    Keyword-constructible, so LazyConfig users write ``L(FBNetBackbone)(arch="FBNetV3-A",
    out_features=["res4"])``.
    """

    def __init__(self, arch: Union[str, DetectionArch] = "FBNetV3-A", out_features: Sequence[str] = ("res4",),
                 norm: str = "BN", freeze_at: int = 0, pretrained: Union[bool, str] = "",
                 width_divisor: Optional[int] = None, width_multiplier: float = 1.0):
        super().__init__()
        darch = resolve_arch(arch, width_divisor, width_multiplier)
        self.arch = darch
        model = build_fbnet(darch, norm_layer=norm_layer(norm), pretrained=pretrained, norm=norm)
        self.body = FBNetTrunk(model, list(out_features))
        self._out_features = list(out_features)
        self._out_feature_strides = {f.name: f.stride for f in self.body.features}
        self._out_feature_channels = {f.name: f.channels for f in self.body.features}
        if freeze_at > 0:
            self.body.freeze(freeze_at)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.body(x)

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
                for n in self._out_features}


def _kwargs(cfg) -> dict:
    f = cfg.MODEL.FBNET
    return dict(norm=f.NORM, freeze_at=f.FREEZE_AT, pretrained=f.PRETRAINED,
                width_divisor=f.WIDTH_DIVISOR or None, width_multiplier=f.WIDTH_MULTIPLIER)


@BACKBONE_REGISTRY.register()
def FBNetC4Backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    darch = arch_from_cfg(cfg)
    wanted = list(cfg.MODEL.FBNET.OUT_FEATURES)
    feat = c4_feature(darch.spec)
    if wanted != [feat]:
        raise DetectionError(f"MODEL.FBNET.OUT_FEATURES: {wanted} must be [{feat!r}] for the C4 backbone "
                             f"(the output of {darch.spec.name}'s last stride-16 stage)")
    return FBNetBackbone(darch, [feat], **_kwargs(cfg))


def fpn_backbone(darch: DetectionArch, in_features: Sequence[str], out_channels: int, fpn_norm: str = "",
                 fuse_type: str = "sum", **kwargs) -> FPN:
    """detectron2's FPN over the FBNet features ``in_features``; kwargs go to FBNetBackbone."""
    check_fpn_features(darch.spec, in_features)
    darch = same_padding(darch)
    bottom_up = FBNetBackbone(darch, list(in_features), **kwargs)
    return FPN(bottom_up=bottom_up, in_features=list(in_features), out_channels=out_channels, norm=fpn_norm,
               top_block=LastLevelMaxPool(), fuse_type=fuse_type)


@BACKBONE_REGISTRY.register()
def FBNetFPNBackbone(cfg, input_shape: ShapeSpec) -> Backbone:
    darch = arch_from_cfg(cfg)
    return fpn_backbone(darch, cfg.MODEL.FPN.IN_FEATURES, cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.FPN.NORM,
                        cfg.MODEL.FPN.FUSE_TYPE, **_kwargs(cfg))


def build_backbone(arch="FBNetV3-A", variant: str = "c4", in_features: Optional[Sequence[str]] = None,
                   fpn_channels: int = 256, fpn_norm: str = "", **kwargs) -> Backbone:
    """A detectron2 Backbone in Python: ``variant="c4"`` -> one output ``res4``;
    ``"fpn"`` -> FPN outputs p2..p6 over res2..res5 (or ``in_features``). kwargs: norm,
    freeze_at, pretrained, width_divisor, width_multiplier."""
    if variant not in VARIANTS:
        raise DetectionError(f"variant: {variant!r} is not one of {list(VARIANTS)}")
    darch = resolve_arch(arch, kwargs.pop("width_divisor", None), kwargs.pop("width_multiplier", 1.0))
    if variant == "c4":
        return FBNetBackbone(darch, [c4_feature(darch.spec)], **kwargs)
    feats = list(in_features) if in_features else default_fpn_features(darch.spec)
    return fpn_backbone(darch, feats, fpn_channels, fpn_norm, **kwargs)
