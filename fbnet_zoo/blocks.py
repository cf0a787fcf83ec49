"""Building blocks and their cost twins.

Each block's ``complexity`` staticmethod mirrors its ``__init__`` line by line (the pycls
idea): it advances a ``Cx`` (spatial size, channels, FLOPs, params) through the same
layers without building them. What each op costs is the ``Cx``'s convention
(conventions.py): fvcore's by default, the FBNetV3 authors' on request. Tests pin every
twin to fvcore and to the authors' counter on the built module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Tuple

import torch
from torch import nn

from .conventions import FVCORE, CostRules
from .spec import ResolvedBlock

NormLayer = Callable[[int], nn.Module]


@dataclass
class Cx:
    """Running cost of a network walk: current feature map and the totals so far, counted
    by ``rules``."""

    h: int
    w: int
    c: int
    flops: int = 0
    params: int = 0
    rules: CostRules = FVCORE


def conv_cx(cx: Cx, c_out: int, k: int, stride: int = 1, padding: Tuple[int, int] = None,
            groups: int = 1, bias: bool = False) -> Cx:
    ph, pw = (k // 2, k // 2) if padding is None else padding
    h = (cx.h + 2 * ph - k) // stride + 1
    w = (cx.w + 2 * pw - k) // stride + 1
    macs_per_px = cx.c // groups * c_out * k * k
    cx.params += macs_per_px + (c_out if bias and cx.rules.counts_bias_params else 0)
    cx.flops += macs_per_px * h * w
    cx.h, cx.w, cx.c = h, w, c_out
    return cx


def norm_cx(cx: Cx) -> Cx:
    cx.params += 2 * cx.c if cx.rules.counts_norm_params else 0
    cx.flops += cx.rules.norm_flops_per_element * cx.c * cx.h * cx.w
    return cx


def pool_cx(cx: Cx) -> Cx:
    cx.flops += cx.c * cx.h * cx.w
    cx.h = cx.w = 1
    return cx


def headless_pool_cx(cx: Cx) -> Cx:
    """The global pool a headless model's forward applies (a functional call, not a module):
    fvcore traces it, the authors' counter sees modules only."""
    if cx.rules.counts_functional_ops:
        return pool_cx(cx)
    cx.h = cx.w = 1
    return cx


def upsample_cx(cx: Cx, factor: int) -> Cx:
    cx.h, cx.w = cx.h * factor, cx.w * factor
    cx.flops += cx.rules.upsample_flops_per_element * cx.c * cx.h * cx.w
    return cx


def linear_cx(cx: Cx, c_out: int) -> Cx:
    cx.params += cx.c * c_out + (c_out if cx.rules.counts_bias_params else 0)
    cx.flops += cx.c * c_out
    cx.c = c_out
    return cx


def activation(name: str) -> nn.Module:
    if name == "hswish":
        return nn.Hardswish(inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "swish":
        return nn.SiLU(inplace=True)
    return nn.Identity()


class ConvBNAct(nn.Module):
    """conv -> norm -> act; ``norm=False`` / ``act="identity"`` leave those out."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, padding: Tuple[int, int] = None,
                 groups: int = 1, bias: bool = False, norm: bool = True, act: str = "identity",
                 norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        padding = (k // 2, k // 2) if padding is None else padding
        self.conv = nn.Conv2d(c_in, c_out, k, stride, padding, groups=groups, bias=bias)
        self.bn = norm_layer(c_out) if norm else nn.Identity()
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @staticmethod
    def complexity(cx: Cx, c_out: int, k: int, stride: int = 1, padding: Tuple[int, int] = None,
                   groups: int = 1, bias: bool = False, norm: bool = True) -> Cx:
        conv_cx(cx, c_out, k, stride, padding, groups, bias)
        return norm_cx(cx) if norm else cx


class SqueezeExcite(nn.Module):
    """Global pool -> 1x1 reduce (+bias) -> act -> 1x1 expand (+bias) -> gate, scaling the input."""

    def __init__(self, channels: int, hidden: int, act: str = "hswish", gate: str = "hsigmoid"):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=True)
        self.act = activation(act)
        self.expand = nn.Conv2d(hidden, channels, 1, bias=True)
        self.gate = nn.Hardsigmoid() if gate == "hsigmoid" else nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))

    @staticmethod
    def complexity(cx: Cx, hidden: int) -> Cx:
        h, w, c = cx.h, cx.w, cx.c
        pool_cx(cx)
        conv_cx(cx, hidden, 1, bias=True)
        conv_cx(cx, c, 1, bias=True)
        cx.h, cx.w = h, w
        return cx


class DropPath(nn.Module):
    """Stochastic depth on a residual branch (per sample). Written here because
    ``import fbnet_zoo`` needs only torch (torchvision's StochasticDepth is the same op)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Upsampled(nn.Module):
    """Nearest-neighbour upsampling in front of a block (mask-head rows with upsample: 2)."""

    def __init__(self, factor: int, block: nn.Module):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=float(factor), mode="nearest")
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.upsample(x))


class InvertedResidual(nn.Module):
    """[1x1 expand conv-BN-act] -> kxk depthwise conv-BN-act -> [SE] -> 1x1 project conv-BN,
    plus the input when ``block.residual``. Expansion 1 has no expand conv."""

    def __init__(self, block: ResolvedBlock, norm_layer: NormLayer = nn.BatchNorm2d, drop_path: float = 0.0):
        super().__init__()
        row, mid = block.row, block.mid_channels
        self.pw = ConvBNAct(block.in_channels, mid, 1, act=row.act, norm_layer=norm_layer) if block.expands else None
        self.dw = ConvBNAct(mid, mid, row.kernel, block.stride, block.padding, groups=mid,
                            norm=row.dw_bn_act, act=row.act if row.dw_bn_act else "identity",
                            norm_layer=norm_layer)
        self.se = SqueezeExcite(mid, block.se_channels, row.act, row.se_gate) if row.se else None
        self.pwl = ConvBNAct(mid, block.out_channels, 1, norm_layer=norm_layer)
        self.residual = block.residual
        self.drop_path = DropPath(drop_path) if (self.residual and drop_path > 0) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.pw is not None:
            y = self.pw(y)
        y = self.dw(y)
        if self.se is not None:
            y = self.se(y)
        y = self.pwl(y)
        if self.residual:
            if self.drop_path is not None:
                y = self.drop_path(y)
            y = y + x
        return y

    @staticmethod
    def complexity(cx: Cx, block: ResolvedBlock) -> Cx:
        row, mid = block.row, block.mid_channels
        if block.expands:
            ConvBNAct.complexity(cx, mid, 1)
        ConvBNAct.complexity(cx, mid, row.kernel, block.stride, block.padding, groups=mid, norm=row.dw_bn_act)
        if row.se:
            SqueezeExcite.complexity(cx, block.se_channels)
        return ConvBNAct.complexity(cx, block.out_channels, 1)


class PooledHead(nn.Module):
    """The pooled last stage ('ir_pool'): 1x1 expand conv-BN-act, global average pool,
    1x1 conv to out_channels (no bias, no BN) + act. Output is N x out_channels x 1 x 1."""

    def __init__(self, block: ResolvedBlock, norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        act = block.row.act
        self.pw = ConvBNAct(block.in_channels, block.mid_channels, 1, act=act, norm_layer=norm_layer)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pwl = ConvBNAct(block.mid_channels, block.out_channels, 1, norm=False, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pwl(self.pool(self.pw(x)))

    @staticmethod
    def complexity(cx: Cx, block: ResolvedBlock) -> Cx:
        ConvBNAct.complexity(cx, block.mid_channels, 1)
        pool_cx(cx)
        return ConvBNAct.complexity(cx, block.out_channels, 1, norm=False)


class Classifier(nn.Module):
    """Global average pool -> dropout -> linear. Pooling again after the pooled head is a
    no-op on values, but fvcore counts it; the reference head does the same."""

    def __init__(self, c_in: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))

    @staticmethod
    def complexity(cx: Cx, num_classes: int) -> Cx:
        pool_cx(cx)
        return linear_cx(cx, num_classes)


def build_block(block: ResolvedBlock, norm_layer: NormLayer = nn.BatchNorm2d, drop_path: float = 0.0) -> nn.Module:
    """The module for one resolved block (see ``spec.walk_rows``)."""
    row = block.row
    if row.type == "conv":
        module: nn.Module = ConvBNAct(block.in_channels, block.out_channels, row.kernel, block.stride,
                                      bias=row.bias, act=row.act, norm_layer=norm_layer)
    elif row.type == "ir":
        module = InvertedResidual(block, norm_layer, drop_path)
    else:
        module = PooledHead(block, norm_layer)
    if block.upsample != 1:
        module = Upsampled(block.upsample, module)
    return module


def block_complexity(cx: Cx, block: ResolvedBlock) -> Cx:
    """Cost twin of ``build_block``."""
    if block.upsample != 1:
        upsample_cx(cx, block.upsample)
    if block.type == "conv":
        return ConvBNAct.complexity(cx, block.out_channels, block.row.kernel, block.stride, bias=block.row.bias)
    if block.type == "ir":
        return InvertedResidual.complexity(cx, block)
    return PooledHead.complexity(cx, block)
