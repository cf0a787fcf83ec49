"""Framework-neutral pieces of the detection adapters (torch only).

How a backbone is split for detection (the authors' d2go convention, nars_facts.md):

* C4: the *trunk* is the stem and every stage up to the last stride-16 stage; the RPN
  head is the trunk's last row repeated; the RoI box head runs the stride-32 stages on
  RoI-pooled features (the role of ResNet's res5 in detectron2's C4 models).
* FPN: every spatial stage feeds the pyramid.

Feature names follow detectron2's ResNet convention so configs read the same for every
arch: the output of the last stage with cumulative stride 2**k is ``res{k}`` (``res4`` is
the C4 feature, ``res2``..``res5`` feed an FPN).

Both the detectron2 registrations (``fbnet_zoo.detection.d2``) and the torchvision path
(``fbnet_zoo.detection.tv``) are built from the modules here.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from fbnet_zoo import checkpoints
from fbnet_zoo.blocks import build_block
from fbnet_zoo.converters import convert_to_ours, detect_format, strip_prefix
from fbnet_zoo.errors import DetectionError, SpecError, UnknownModelError
from fbnet_zoo.io_utils import YamlFolderRegistry
from fbnet_zoo.model import FBNet, forward_to_features, init_weights
from fbnet_zoo.registry import load_spec, normalize_name, register_arch
from fbnet_zoo.scaling import scale
from fbnet_zoo.spec import ArchSpec, BlockSpec, Feature, walk_rows

NormLayer = Callable[[int], nn.Module]
VARIANTS = ("c4", "fpn")


# --------------------------------------------------------------------------- arch + heads
@dataclass(frozen=True)
class DetectionArch:
    """A backbone spec plus optional head rows (the authors' d2go variants carry their own).

    ``rpn`` / ``mask``: per variant ("c4" / "fpn"), a tuple of BlockSpec rows, or absent for
    the defaults (RPN: the trunk's last row; mask: ``DEFAULT_MASK_ROWS`` with the arch's act).
    """

    spec: ArchSpec
    rpn: Mapping[str, Tuple[BlockSpec, ...]]
    mask: Mapping[str, Tuple[BlockSpec, ...]]


def _default_mask_rows(act: str) -> Tuple[BlockSpec, ...]:
    """Light mask head on 14x14 RoI features -> 28x28 (the shape of the authors' FBNetV3-A head)."""
    return (BlockSpec("ir", 128, stride=2, kernel=3, expansion=4, act=act),
            BlockSpec("ir", 128, repeats=2, kernel=3, expansion=6, act=act),
            BlockSpec("ir", 128, kernel=3, expansion=6, act=act, upsample=2),
            BlockSpec("ir", 64, kernel=3, expansion=3, act=act, upsample=2))


HeadPresets = Dict[str, Dict[str, Tuple[BlockSpec, ...]]]


def _parse_d2go_file(data: Any, path: str) -> List[Tuple[str, Tuple[ArchSpec, HeadPresets]]]:
    """One d2go detection variant: its backbone spec and its RPN / mask head rows."""
    if not isinstance(data, Mapping) or not isinstance(data.get("backbone"), Mapping):
        raise DetectionError(f"{path}: expected a mapping with a 'backbone' arch and optional 'rpn' / 'mask' rows")
    spec = ArchSpec.from_dict(data["backbone"])
    heads: HeadPresets = {"rpn": {}, "mask": {}}
    for part in ("rpn", "mask"):
        for variant, rows in (data.get(part) or {}).items():
            parsed = ArchSpec.from_dict({"name": f"{spec.name}.{part}.{variant}", "input_size": 224, "stages": [rows]})
            heads[part][variant] = parsed.stages[0]
    return [(normalize_name(spec.name), (spec, heads))]


# The authors' detection variants (model_configs/detection/d2go/*.yaml), through the zoo's one
# YAML-folder registry.
_D2GO_PRESETS: YamlFolderRegistry[Tuple[ArchSpec, HeadPresets]] = YamlFolderRegistry(
    "detection preset", _parse_d2go_file, DetectionError, builtin=os.path.join("detection", "d2go"))
_HEAD_PRESETS: Dict[str, HeadPresets] = {}


def register_d2go_archs() -> List[str]:
    """Register the authors' detection variants (model_configs/detection/d2go/*.yaml) as zoo
    specs (``FBNetV3-A-d2go`` ...) and remember their RPN / mask head rows. Idempotent."""
    names = []
    for key, (spec, heads) in _D2GO_PRESETS.items().items():
        register_arch(spec, overwrite=True)
        _HEAD_PRESETS[key] = heads
        names.append(spec.name)
    return names


def resolve_arch(arch: Union[str, os.PathLike, ArchSpec, Mapping[str, Any], DetectionArch],
                 width_divisor: Optional[int] = None, width_multiplier: float = 1.0) -> DetectionArch:
    """Zoo name, YAML path, dict or spec -> DetectionArch (unknown names raise DetectionError)."""
    if isinstance(arch, DetectionArch):
        return arch
    if isinstance(arch, (str, os.PathLike)) and not os.fspath(arch).strip():
        raise DetectionError("MODEL.FBNET.ARCH: '' is empty; give a zoo name (e.g. 'FBNetV3-A') or a YAML path")
    try:
        spec = load_spec(arch)
    except UnknownModelError as e:
        raise DetectionError(f"MODEL.FBNET.ARCH: {e}") from None
    except SpecError as e:
        raise DetectionError(f"MODEL.FBNET.ARCH: {arch!r}: {e}") from None
    if width_multiplier != 1.0:
        spec = scale(spec, width=width_multiplier, name=f"{spec.name}_w{width_multiplier:g}")
    if width_divisor:
        spec = spec.replace(width_divisor=int(width_divisor))
    heads = _HEAD_PRESETS.get(normalize_name(spec.name), {"rpn": {}, "mask": {}})
    return DetectionArch(spec, heads["rpn"], heads["mask"])


# --------------------------------------------------------------------------- layout
def feature_layout(spec: ArchSpec) -> List[Feature]:
    """The named features of a spec (``ArchSpec.features()``): ``res{k}`` is the output of the
    last block at cumulative stride 2**k, with its stage, stride and channels."""
    return list(spec.features())


def c4_split(spec: ArchSpec) -> Tuple[List[int], List[int]]:
    """(trunk stage indices, box-head stage indices) for a C4 model; clear errors otherwise."""
    strides = spec.stage_strides()
    desc = ", ".join(f"{k}={v}" for k, v in strides.items())
    s16 = [si for si in spec.feature_stages if strides[f"stage{si}"] == 16]
    if not s16:
        raise DetectionError(f"MODEL.FBNET.ARCH: {spec.name!r} has no stride-16 stage, which the C4 trunk "
                             f"ends with (stage strides: {desc})")
    last = s16[-1]
    box = [si for si in spec.feature_stages if si > last and strides[f"stage{si}"] == 32]
    if not box:
        raise DetectionError(f"MODEL.FBNET.ARCH: {spec.name!r} has no stride-32 stage after its stride-16 stage "
                             f"for the RoI box head (stage strides: {desc})")
    return list(range(last + 1)), box


def c4_feature(spec: ArchSpec) -> str:
    """The C4 trunk's one output: the feature of its last stride-16 stage."""
    last = c4_split(spec)[0][-1]
    return next(f.name for f in feature_layout(spec) if f.stage == last)


def default_fpn_features(spec: ArchSpec) -> List[str]:
    """What an FPN takes when the user names nothing: every feature from stride 4 on."""
    return [f.name for f in feature_layout(spec) if f.stride >= 4]


def check_fpn_features(spec: ArchSpec, in_features: Sequence[str]) -> List[Feature]:
    """The features an FPN asks for, in order; DetectionError when one is missing or the
    strides do not double from one to the next (what an FPN needs)."""
    layout = {f.name: f for f in feature_layout(spec)}
    if not in_features:
        raise DetectionError("MODEL.FPN.IN_FEATURES: [] is empty; available: " + str(list(layout)))
    missing = [n for n in in_features if n not in layout]
    if missing:
        raise DetectionError(f"MODEL.FPN.IN_FEATURES: {missing[0]!r} is not a feature of {spec.name!r}; "
                             f"available: {list(layout)} (strides {[f.stride for f in layout.values()]})")
    feats = [layout[n] for n in in_features]
    for a, b in zip(feats, feats[1:]):
        if b.stride != 2 * a.stride:
            raise DetectionError(f"MODEL.FPN.IN_FEATURES: {list(in_features)} must have strides doubling from one "
                                 f"to the next; got {a.name}={a.stride} then {b.name}={b.stride}")
    return feats


# --------------------------------------------------------------------------- modules
def build_rows(c_in: int, rows: Sequence[BlockSpec], divisor: int, norm_layer: NormLayer) -> Tuple[nn.Sequential, int]:
    """Blocks for a list of rows (head bodies); returns (module, output channels)."""
    blocks, c = [], c_in
    for block in walk_rows(rows, c_in, divisor):
        blocks.append(build_block(block, norm_layer))
        c = block.out_channels
    body = nn.Sequential(*blocks)
    init_weights(body)
    return body, c


BN_FAMILY = ("FrozenBN", "SyncBN", "naiveSyncBN")


@functools.lru_cache(maxsize=2)
def _pretrained_state(name: str, pretrained: Union[bool, str]) -> "OrderedDict[str, torch.Tensor]":
    sd, src, _ = checkpoints.load_checkpoint(pretrained, name)
    fmt = src.converter if src else detect_format(sd)
    return convert_to_ours(strip_prefix(sd), name, fmt)


def pretrained_state(arch: DetectionArch, pretrained: Union[bool, str]) -> "OrderedDict[str, torch.Tensor]":
    """The backbone checkpoint ``pretrained`` of ``arch`` in our FBNet key names (``stages.{i}.{j}...``).
    Read once per process for the last two sources asked for: a C4 detector's backbone and
    its RoI box head (the stride-32 stages) take their weights from the same read."""
    key = pretrained if isinstance(pretrained, bool) else os.fspath(pretrained)
    return _pretrained_state(arch.spec.name, key)


def _convert_norm(module: nn.Module, norm: str) -> nn.Module:
    if norm == "FrozenBN":
        return _freeze_bn(module)
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def build_fbnet(arch: DetectionArch, norm_layer: Optional[NormLayer] = None,
                pretrained: Union[bool, str] = False, norm: str = "BN") -> FBNet:
    """The whole backbone network (no classifier), optionally with pretrained weights.

    With ``pretrained``, BN-family norms ("FrozenBN", "SyncBN", "naiveSyncBN") are built as
    BatchNorm, loaded, then converted (statistics and affine kept); other norms build with
    ``norm_layer`` directly."""
    convert_after = bool(pretrained) and norm in BN_FAMILY
    model = FBNet(arch.spec, num_classes=0, norm_layer=None if convert_after else norm_layer)
    if pretrained:
        checkpoints.load_state_dict_checked(model, pretrained_state(arch, pretrained), where=f"pretrained {pretrained!r}")
    if convert_after:
        model.stages = _convert_norm(model.stages, norm)
    return model


def build_stages(arch: DetectionArch, stages: Sequence[int], norm_layer: Optional[NormLayer] = None,
                 pretrained: Union[bool, str] = False, norm: str = "BN") -> Tuple[nn.Sequential, int]:
    """Only the stages ``stages`` of the backbone (modules ``stage{i}``, fed the output of the
    stage before them), with their pretrained weights when asked: what a C4 RoI box head
    needs, without a second whole FBNet. Returns (module, output channels)."""
    spec = arch.spec
    c = spec.stage_channels()[f"stage{stages[0] - 1}"] if stages[0] > 0 else spec.in_channels
    convert_after = bool(pretrained) and norm in BN_FAMILY
    layer = nn.BatchNorm2d if convert_after or norm_layer is None else norm_layer
    parts = OrderedDict()
    for si in stages:
        parts[f"stage{si}"], c = build_rows(c, spec.stages[si], spec.width_divisor, layer)
    body = nn.Sequential(parts)
    if pretrained:
        sd = pretrained_state(arch, pretrained)
        for si in stages:
            prefix = f"stages.{si}."
            sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            missing, unexpected = body[list(parts).index(f"stage{si}")].load_state_dict(sub, strict=False)
            missing = [k for k in missing if not k.endswith("num_batches_tracked")]
            if missing or unexpected:
                raise DetectionError(f"pretrained {pretrained!r}: stage {si} of {spec.name!r} does not match the "
                                     f"checkpoint (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if convert_after:
        body = _convert_norm(body, norm)
    return body, c


class FBNetTrunk(nn.Module):
    """Stages 0..k of an FBNet (modules ``stage{i}``) returning the named features asked for,
    through the model's own staged forward (``fbnet_zoo.model.forward_to_features``)."""

    def __init__(self, model: FBNet, out_features: Sequence[str]):
        super().__init__()
        layout = {f.name: f for f in feature_layout(model.spec)}
        unknown = [n for n in out_features if n not in layout]
        if unknown:
            raise DetectionError(f"out_features: {unknown[0]!r} is not a feature of {model.spec.name!r}; "
                                 f"available: {list(layout)}")
        self.features = [layout[n] for n in out_features]
        self.out_features = list(out_features)
        last = max(f.stage for f in self.features)
        for i in range(last + 1):
            self.add_module(f"stage{i}", model.stages[i])
        self.num_stages = last + 1

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        stages = [getattr(self, f"stage{i}") for i in range(self.num_stages)]
        return forward_to_features(stages, x, self.features)

    def freeze(self, freeze_at: int) -> None:
        """Freeze stages 0..freeze_at-1 (no grads; BN -> FrozenBatchNorm where available)."""
        for i in range(min(freeze_at, self.num_stages)):
            stage = getattr(self, f"stage{i}")
            for p in stage.parameters():
                p.requires_grad_(False)
            setattr(self, f"stage{i}", _freeze_bn(stage))


def _freeze_bn(module: nn.Module) -> nn.Module:
    try:
        from detectron2.layers import FrozenBatchNorm2d

        return FrozenBatchNorm2d.convert_frozen_batchnorm(module)
    except ImportError:
        from torchvision.ops.misc import FrozenBatchNorm2d as TvFrozen

        def convert(m: nn.Module) -> nn.Module:
            if isinstance(m, nn.BatchNorm2d):
                f = TvFrozen(m.num_features, eps=m.eps)
                f.weight.copy_(m.weight.detach()); f.bias.copy_(m.bias.detach())
                f.running_mean.copy_(m.running_mean); f.running_var.copy_(m.running_var)
                return f
            for name, child in m.named_children():
                setattr(m, name, convert(child))
            return m

        return convert(module)


class LightRPNHead(nn.Module):
    """RPN head fitted to FBNet trunks: FBNet blocks (shared over levels), then 1x1 convs for
    objectness and box deltas. ``forward(list of maps) -> (logits list, deltas list)``, the
    contract of both detectron2's and torchvision's RPN."""

    def __init__(self, in_channels: int, rows: Sequence[BlockSpec], num_anchors: int, box_dim: int = 4,
                 divisor: int = 8, norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.rpn_feature, c = build_rows(in_channels, rows, divisor, norm_layer)
        self.objectness_logits = nn.Conv2d(c, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(c, num_anchors * box_dim, 1)
        for layer in (self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: List[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        logits, deltas = [], []
        for x in features:
            t = self.rpn_feature(x)
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


class StagesBoxHead(nn.Module):
    """RoI box head: FBNet stages on pooled RoI features, then global average pooling.
    Output: N x out_channels."""

    def __init__(self, body: nn.Module, out_channels: int):
        super().__init__()
        self.roi_box_conv = body
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.roi_box_conv(x)), 1)


def box_head_from_model(model: FBNet, stages: Sequence[int]) -> StagesBoxHead:
    """The stride-32 stages of an FBNet the caller already has (the torchvision C4 path)."""
    body = nn.Sequential(OrderedDict((f"stage{i}", model.stages[i]) for i in stages))
    return StagesBoxHead(body, model.spec.stage_channels()[f"stage{stages[-1]}"])


def box_head_from_stages(arch: DetectionArch, stages: Sequence[int], **kwargs: Any) -> StagesBoxHead:
    """The stride-32 stages built alone (``build_stages``; kwargs: norm_layer, pretrained, norm)."""
    body, c = build_stages(arch, stages, **kwargs)
    return StagesBoxHead(body, c)


def box_head_from_rows(in_channels: int, spec: ArchSpec, stages: Sequence[int],
                       norm_layer: NormLayer = nn.BatchNorm2d) -> StagesBoxHead:
    """The stride-32 stages rebuilt for other input channels (FPN box heads)."""
    rows = [row for si in stages for row in spec.stages[si]]
    body, c = build_rows(in_channels, rows, spec.width_divisor, norm_layer)
    return StagesBoxHead(body, c)


def rpn_rows(arch: DetectionArch, variant: str, trunk_last_stage: int, repeats: int = -1) -> Tuple[BlockSpec, ...]:
    """The RPN head rows: the variant's preset, else the trunk's last row at stride 1, repeated
    ``repeats`` times when >= 1, else as in the arch (C4) or once (FPN: the head is shared
    over every level, as the authors' FPN preset has it)."""
    if variant in arch.rpn and repeats < 1:
        return arch.rpn[variant]
    row = arch.spec.stages[trunk_last_stage][-1]
    if row.type != "ir":
        raise DetectionError(f"MODEL.FBNET.ARCH: the trunk of {arch.spec.name!r} ends with a {row.type!r} row; "
                             "the RPN head repeats an 'ir' row")
    n = repeats if repeats >= 1 else (1 if variant == "fpn" else row.repeats)
    return (dataclasses.replace(row, repeats=n, stride=1, dw_padding=None, upsample=1),)


def mask_rows(arch: DetectionArch, variant: str) -> Tuple[BlockSpec, ...]:
    if variant in arch.mask:
        return arch.mask[variant]
    acts = [row.act for _, _, _, row in arch.spec.blocks() if row.type == "ir"]
    return _default_mask_rows(acts[-1] if acts else "relu")


class MaskBody(nn.Module):
    """Mask head body (FBNet rows on 14x14 RoI features, upsampling to 28x28) + 1x1 predictor."""

    def __init__(self, in_channels: int, rows: Sequence[BlockSpec], num_classes: int, divisor: int = 8,
                 norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.mask_feature, c = build_rows(in_channels, rows, divisor, norm_layer)
        self.out_channels = c
        self.predictor = nn.Conv2d(c, num_classes, 1)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.mask_feature(x))


def mask_scale(rows: Sequence[BlockSpec]) -> float:
    """Output size / input size of a mask body (e.g. 14 -> 28 gives 2)."""
    s = 1.0
    for row in rows:
        s = s * row.upsample / row.stride
    return s


def same_padding(arch: DetectionArch) -> DetectionArch:
    """The arch with every depthwise padding at k // 2 (drops ``dw_padding``). An FPN needs
    each level to be exactly half the one below (detectron2's FPN upsamples by 2); some
    reference archs pad a stride-2 depthwise conv by less, which breaks that. Parameters and
    weights are unchanged, so pretrained checkpoints still load."""
    if not any(row.dw_padding is not None for _, _, _, row in arch.spec.blocks()):
        return arch
    stages = tuple(tuple(dataclasses.replace(row, dw_padding=None) for row in stage) for stage in arch.spec.stages)
    return DetectionArch(arch.spec.replace(stages=stages), arch.rpn, arch.mask)
