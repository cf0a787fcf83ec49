"""Building blocks and their cost twins.

Each block's ``complexity`` staticmethod mirrors its ``__init__`` line by line (the pycls
idea): it advances a ``Cx`` (spatial size, channels, FLOPs, params) through the same
layers without building them. What each op costs is the ``Cx``'s convention
(conventions.py): fvcore's by default, the FBNetV3 authors' on request. Tests pin every
twin to fvcore and to the authors' counter on the built module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from .conventions import FVCORE, CostRules
from .spec import BlockSpec, make_divisible

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


def _se_hidden(row: BlockSpec, c_in: int, mid: int, divisor: int) -> int:
    base = c_in if row.se_from == "input" else mid
    return make_divisible(base * row.se_ratio, divisor)


def _dw_padding(row: BlockSpec, first: bool) -> Optional[Tuple[int, int]]:
    return row.dw_padding if (first and row.dw_padding is not None) else None


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
    plus the input when stride is 1 and channels match. Expansion 1 has no expand conv."""

    def __init__(self, c_in: int, row: BlockSpec, stride: int, first: bool, divisor: int,
                 norm_layer: NormLayer = nn.BatchNorm2d, drop_path: float = 0.0):
        super().__init__()
        c_out = make_divisible(row.out_channels, divisor)
        mid = make_divisible(c_in * row.expansion, divisor)
        self.pw = ConvBNAct(c_in, mid, 1, act=row.act, norm_layer=norm_layer) if row.expansion != 1 else None
        if row.expansion == 1:
            mid = c_in
        self.dw = ConvBNAct(mid, mid, row.kernel, stride, _dw_padding(row, first), groups=mid,
                            norm=row.dw_bn_act, act=row.act if row.dw_bn_act else "identity",
                            norm_layer=norm_layer)
        self.se = SqueezeExcite(mid, _se_hidden(row, c_in, mid, divisor), row.act, row.se_gate) if row.se else None
        self.pwl = ConvBNAct(mid, c_out, 1, norm_layer=norm_layer)
        # A residual needs the input's shape: stride 1, same channels, a size-preserving
        # depthwise padding and no upsampling in front.
        padding = _dw_padding(row, first)
        keeps_size = padding is None or padding == (row.kernel // 2, row.kernel // 2)
        self.residual = stride == 1 and c_in == c_out and keeps_size and not (first and row.upsample != 1)
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
    def complexity(cx: Cx, row: BlockSpec, stride: int, first: bool, divisor: int) -> Cx:
        c_in = cx.c
        c_out = make_divisible(row.out_channels, divisor)
        mid = make_divisible(c_in * row.expansion, divisor)
        if row.expansion != 1:
            ConvBNAct.complexity(cx, mid, 1)
        else:
            mid = c_in
        ConvBNAct.complexity(cx, mid, row.kernel, stride, _dw_padding(row, first), groups=mid, norm=row.dw_bn_act)
        if row.se:
            SqueezeExcite.complexity(cx, _se_hidden(row, c_in, mid, divisor))
        return ConvBNAct.complexity(cx, c_out, 1)


class PooledHead(nn.Module):
    """The pooled last stage ('ir_pool'): 1x1 expand conv-BN-act, global average pool,
    1x1 conv to out_channels (no bias, no BN) + act. Output is N x out_channels x 1 x 1."""

    def __init__(self, c_in: int, row: BlockSpec, divisor: int, norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        mid = make_divisible(c_in * row.expansion, divisor)
        self.pw = ConvBNAct(c_in, mid, 1, act=row.act, norm_layer=norm_layer)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pwl = ConvBNAct(mid, make_divisible(row.out_channels, divisor), 1, norm=False, act=row.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pwl(self.pool(self.pw(x)))

    @staticmethod
    def complexity(cx: Cx, row: BlockSpec, divisor: int) -> Cx:
        ConvBNAct.complexity(cx, make_divisible(cx.c * row.expansion, divisor), 1)
        pool_cx(cx)
        return ConvBNAct.complexity(cx, make_divisible(row.out_channels, divisor), 1, norm=False)


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


def build_block(c_in: int, row: BlockSpec, first: bool, divisor: int,
                norm_layer: NormLayer = nn.BatchNorm2d, drop_path: float = 0.0) -> nn.Module:
    """One block of a row (``first``: the row's first block, which takes stride/dw_padding)."""
    stride = row.stride if first else 1
    if row.type == "conv":
        block: nn.Module = ConvBNAct(c_in, make_divisible(row.out_channels, divisor), row.kernel, stride,
                                     bias=row.bias, act=row.act, norm_layer=norm_layer)
    elif row.type == "ir":
        block = InvertedResidual(c_in, row, stride, first, divisor, norm_layer, drop_path)
    else:
        block = PooledHead(c_in, row, divisor, norm_layer)
    if first and row.upsample != 1:
        block = Upsampled(row.upsample, block)
    return block


def block_complexity(cx: Cx, row: BlockSpec, first: bool, divisor: int) -> Cx:
    """Cost twin of ``build_block``."""
    stride = row.stride if first else 1
    if first and row.upsample != 1:
        upsample_cx(cx, row.upsample)
    if row.type == "conv":
        return ConvBNAct.complexity(cx, make_divisible(row.out_channels, divisor), row.kernel, stride, bias=row.bias)
    if row.type == "ir":
        return InvertedResidual.complexity(cx, row, stride, first, divisor)
    return PooledHead.complexity(cx, row, divisor)
