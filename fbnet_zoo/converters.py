"""Checkpoint key converters: timm -> ours, mobile_cv / d2go <-> ours.

Reusable block-level mapping (the detection adapters use it for d2go checkpoints)::

    mobile_cv_block_keys(block: nn.Module, ours_prefix: str, theirs_prefix: str) -> Dict[str, str]

        Every state-dict key of ``block`` -- one of our blocks (ConvBNAct, InvertedResidual,
        PooledHead, or Upsampled around one of them) -- written under ``ours_prefix``
        (e.g. ``"stages.3.0."``), mapped to the key the authors' mobile_cv builder gives the
        same tensor under ``theirs_prefix`` (e.g. ``"backbone.stages.xif3_0."``, or for d2go
        ``"backbone.body.trunk2.fbnetv2_3_0."``, ``"proposal_generator.rpn_head.rpn_feature.
        fbnetv2_0_0."``, ``"roi_heads.box_head.roi_box_conv.fbnetv2_0_0."``). Prefixes are
        either empty or end with ".". The map covers every tensor of the block (buffers
        included), so ``{v: k for k, v in m.items()}`` is the mobile_cv -> ours direction.
        Within a block the names agree except: squeeze-excite ``se.reduce`` <-> ``se.se.0.conv``,
        ``se.expand`` <-> ``se.se.1``, and an ``Upsampled`` wrapper's ``block.`` level, which
        mobile_cv does not have.

    rename_state_dict(state_dict, key_map, what="...") -> OrderedDict
        Applies an ours<->theirs key map to a whole state dict; raises CheckpointError naming
        every source key the map does not consume and every mapped key the source lacks.

Model-level converters built on them:

    timm_to_ours(state_dict, arch)            timm's mobilenetv3-style FBNetV3 -> ours
    mobile_cv_to_ours(state_dict, arch)       mobile_cv classification names -> ours
    ours_to_mobile_cv(state_dict, arch)       ours -> mobile_cv classification names
    detect_format(state_dict) -> "ours" | "timm" | "mobile_cv"
    CONVERTERS: {"timm": timm_to_ours, "mobile_cv": mobile_cv_to_ours, "ours": identity}
    register_converter(name, fn)              adds one (e.g. the detection package's d2go converter)

``arch`` is an FBNet model, an ArchSpec or anything ``load_spec`` accepts (a zoo name, a
YAML path); only module names and types are used, so a spec is built on the meta device.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Mapping, Tuple

import torch
from torch import nn

from .blocks import ConvBNAct, InvertedResidual, PooledHead, Upsampled
from .errors import CheckpointError
from .model import FBNet
from .registry import load_spec

StateDict = Mapping[str, torch.Tensor]


def _names(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def as_model(arch) -> nn.Module:
    """An FBNet for ``arch`` (a model is returned as is; a spec/name is built on the meta device)."""
    if isinstance(arch, nn.Module):
        return arch
    with torch.device("meta"):
        return FBNet(load_spec(arch), num_classes=1000)


def _local_keys(module: nn.Module) -> List[str]:
    return list(module.state_dict(keep_vars=True).keys())


def _split(key: str) -> Tuple[str, str]:
    mod, _, param = key.rpartition(".")
    return mod, param


# ----------------------------------------------------------------------------- mobile_cv

_MOBILE_CV_SUBMODULES = {"se.reduce": "se.se.0.conv", "se.expand": "se.se.1"}


def mobile_cv_block_keys(block: nn.Module, ours_prefix: str = "", theirs_prefix: str = "") -> Dict[str, str]:
    """Our key -> mobile_cv key for every tensor of one block (see the module docstring)."""
    inner, extra = block, ""
    if isinstance(block, Upsampled):
        inner, extra = block.block, "block."
    if not isinstance(inner, (ConvBNAct, InvertedResidual, PooledHead)):
        raise CheckpointError(f"mobile_cv_block_keys: {type(block).__name__} at {ours_prefix!r} is not an FBNet block "
                              "(ConvBNAct, InvertedResidual, PooledHead, Upsampled)")
    out: Dict[str, str] = {}
    for key in _local_keys(inner):
        mod, param = _split(key)
        theirs = _MOBILE_CV_SUBMODULES.get(mod, mod)
        out[f"{ours_prefix}{extra}{key}"] = f"{theirs_prefix}{theirs}.{param}"
    return out


def mobile_cv_stage_block_name(stage: int, block: int, style: str = "xif") -> str:
    """The mobile_cv module name of block ``block`` of stage ``stage``: ``xif3_0`` (classification
    FBNet builder) or ``fbnetv2_3_0`` (d2go's detection builder, ``style="fbnetv2"``)."""
    return f"{style}{stage}_{block}"


def mobile_cv_key_map(arch, prefix: str = "backbone.stages.", head: str = "head.conv.") -> Dict[str, str]:
    """Our key -> mobile_cv key for a whole classification FBNet (backbone + 1x1-conv head).

    Stage i, block j of ours is ``{prefix}xif{i}_{j}``; ``classifier.fc`` is ``{head}``
    (a 1x1 conv in mobile_cv, a Linear here: the converters reshape it).
    """
    model = as_model(arch)
    out: Dict[str, str] = {}
    for si, stage in enumerate(model.stages):
        for bi, block in enumerate(stage):
            out.update(mobile_cv_block_keys(block, f"stages.{si}.{bi}.",
                                             f"{prefix}{mobile_cv_stage_block_name(si, bi)}."))
    if getattr(model, "classifier", None) is not None:
        out["classifier.fc.weight"] = f"{head}weight"
        out["classifier.fc.bias"] = f"{head}bias"
    return out


# ----------------------------------------------------------------------------- renaming

def strip_prefix(state_dict: StateDict, prefix: str = "module.") -> "OrderedDict[str, torch.Tensor]":
    """Drop ``prefix`` (DataParallel's ``module.``) when every key has it."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return OrderedDict((k[len(prefix):], v) for k, v in state_dict.items())
    return OrderedDict(state_dict)


def rename_state_dict(state_dict: StateDict, key_map: Mapping[str, str], what: str = "checkpoint",
                      ignore: Callable[[str], bool] = lambda k: False) -> "OrderedDict[str, torch.Tensor]":
    """``{key_map[k]: v}`` for every source key; every tensor must be accounted for.

    ``key_map`` maps source keys to target keys. Raises CheckpointError naming the source
    keys it has no rule for (unless ``ignore(key)``) and the mapped keys the source lacks.
    """
    unexpected = [k for k in state_dict if k not in key_map and not ignore(k)]
    missing = [k for k in key_map if k not in state_dict]
    if unexpected or missing:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_names(unexpected)}")
        raise CheckpointError(f"{what}: " + "; ".join(parts))
    return OrderedDict((key_map[k], v) for k, v in state_dict.items() if k in key_map)


def _head_to_linear(sd: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
    w = sd.get("classifier.fc.weight")
    if w is not None and w.dim() == 4:
        if tuple(w.shape[2:]) != (1, 1):
            raise CheckpointError(f"head conv weight: shape {tuple(w.shape)} is not a 1x1 conv")
        sd["classifier.fc.weight"] = w.reshape(w.shape[0], w.shape[1])
    return sd


def mobile_cv_to_ours(state_dict: StateDict, arch, prefix: str = "backbone.stages.",
                      head: str = "head.conv.") -> "OrderedDict[str, torch.Tensor]":
    """mobile_cv classification checkpoint (``backbone.stages.xif*``, ``head.conv``) -> our keys."""
    state_dict = strip_prefix(state_dict)
    key_map = mobile_cv_key_map(arch, prefix, head)
    if f"{head}weight" not in state_dict:  # a backbone-only checkpoint
        key_map = {k: v for k, v in key_map.items() if not k.startswith("classifier.")}
    inverse = {v: k for k, v in key_map.items()}
    return _head_to_linear(rename_state_dict(state_dict, inverse, "mobile_cv -> ours"))


def ours_to_mobile_cv(state_dict: StateDict, arch, prefix: str = "backbone.stages.",
                      head: str = "head.conv.") -> "OrderedDict[str, torch.Tensor]":
    """Our keys -> mobile_cv classification names (the Linear classifier as a 1x1 conv)."""
    key_map = mobile_cv_key_map(arch, prefix, head)
    if "classifier.fc.weight" not in state_dict:
        key_map = {k: v for k, v in key_map.items() if not k.startswith("classifier.")}
    out = rename_state_dict(state_dict, key_map, "ours -> mobile_cv")
    w = out.get(f"{head}weight")
    if w is not None and w.dim() == 2:
        out[f"{head}weight"] = w.reshape(w.shape[0], w.shape[1], 1, 1)
    return out


# ----------------------------------------------------------------------------- timm

# timm's block layouts (efficientnet_blocks): per our submodule, timm's name.
_TIMM_IR = {"pw.conv": "conv_pw", "pw.bn": "bn1", "dw.conv": "conv_dw", "dw.bn": "bn2",
            "se.reduce": "se.conv_reduce", "se.expand": "se.conv_expand", "pwl.conv": "conv_pwl", "pwl.bn": "bn3"}
_TIMM_DS = {"dw.conv": "conv_dw", "dw.bn": "bn1", "se.reduce": "se.conv_reduce", "se.expand": "se.conv_expand",
            "pwl.conv": "conv_pw", "pwl.bn": "bn2"}
_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


def _map_block(block: nn.Module, table: Mapping[str, str], ours_prefix: str, theirs_prefix: str) -> Dict[str, str]:
    out = {}
    for key in _local_keys(block):
        mod, param = _split(key)
        if mod not in table:
            raise CheckpointError(f"timm converter: no timm name for {ours_prefix}{key}")
        out[f"{ours_prefix}{key}"] = f"{theirs_prefix}{table[mod]}.{param}"
    return out


def timm_key_map(arch, timm_keys: Iterable[str]) -> Dict[str, str]:
    """Our key -> timm key for timm's FBNetV3 (``timm.models.mobilenetv3``).

    timm groups blocks into stages differently from us (its stride-16 stage is split in
    two), so blocks are matched in order: the stem is ``conv_stem``/``bn1``, our inverted
    residuals are timm's ``blocks.i.j`` in (i, j) order (expansion-1 ones are timm's
    depthwise-separable blocks), timm's last block (a 1x1 conv-BN-act) plus ``conv_head`` is
    our pooled head, and ``classifier`` is ``classifier.fc``.
    """
    model = as_model(arch)
    timm_blocks = sorted({tuple(int(g) for g in m.groups()) for m in map(_TIMM_BLOCK.match, timm_keys) if m})
    ours = [(f"stages.{si}.{bi}.", block) for si, stage in enumerate(model.stages) for bi, block in enumerate(stage)]
    if not ours or not isinstance(ours[0][1], ConvBNAct) or not isinstance(ours[-1][1], PooledHead):
        raise CheckpointError(f"timm converter: {model.spec.name} does not start with a conv stem and end with "
                              "a pooled head, as timm's FBNetV3 does")
    middle = ours[1:-1]
    if len(timm_blocks) != len(middle) + 1:
        raise CheckpointError(f"timm converter: the checkpoint has {len(timm_blocks)} blocks (incl. the final "
                              f"1x1 conv), {model.spec.name} needs {len(middle) + 1}; wrong architecture?")
    out: Dict[str, str] = {}
    stem = ours[0][1]
    out.update(_map_block(stem, {"conv": "conv_stem", "bn": "bn1"}, ours[0][0], ""))
    for (prefix, block), (i, j) in zip(middle, timm_blocks[:-1]):
        if not isinstance(block, InvertedResidual):
            raise CheckpointError(f"timm converter: {prefix[:-1]} is a {type(block).__name__}, timm has an "
                                  "inverted residual there")
        table = _TIMM_IR if block.pw is not None else _TIMM_DS
        out.update(_map_block(block, table, prefix, f"blocks.{i}.{j}."))
    i, j = timm_blocks[-1]
    head_prefix, head = ours[-1]
    out.update(_map_block(head, {"pw.conv": f"blocks.{i}.{j}.conv", "pw.bn": f"blocks.{i}.{j}.bn1",
                                 "pwl.conv": "conv_head"}, head_prefix, ""))
    if getattr(model, "classifier", None) is not None:
        out["classifier.fc.weight"] = "classifier.weight"
        out["classifier.fc.bias"] = "classifier.bias"
    return out


def timm_to_ours(state_dict: StateDict, arch) -> "OrderedDict[str, torch.Tensor]":
    """timm ``fbnetv3_b/d/g`` state dict -> ours (load into the matching ``FBNetV3-*-timm`` arch)."""
    state_dict = strip_prefix(state_dict)
    key_map = timm_key_map(arch, state_dict.keys())
    if "classifier.weight" not in state_dict:  # timm's num_classes=0 models have no classifier
        key_map = {k: v for k, v in key_map.items() if not k.startswith("classifier.")}
    inverse = {v: k for k, v in key_map.items()}
    return rename_state_dict(state_dict, inverse, "timm -> ours")


# ----------------------------------------------------------------------------- dispatch

def detect_format(state_dict: StateDict) -> str:
    """Which naming a state dict uses: "ours", "timm" or "mobile_cv"."""
    keys = list(strip_prefix(state_dict).keys())
    if any(k.startswith("stages.") for k in keys):
        return "ours"
    if any(k.startswith("conv_stem.") for k in keys) and any(k.startswith("blocks.") for k in keys):
        return "timm"
    if any(k.startswith("backbone.stages.xif") for k in keys):
        return "mobile_cv"
    raise CheckpointError(f"checkpoint: cannot tell its format from its keys ({_names(keys, 4)}); "
                          "expected ours (stages.*), timm (conv_stem.*, blocks.*) or mobile_cv (backbone.stages.xif*)")


def _identity(state_dict: StateDict, arch=None) -> "OrderedDict[str, torch.Tensor]":
    return strip_prefix(state_dict)


CONVERTERS: Dict[str, Callable[..., "OrderedDict[str, torch.Tensor]"]] = {
    "ours": _identity,
    "timm": timm_to_ours,
    "mobile_cv": mobile_cv_to_ours,
}


def register_converter(name: str, fn: Callable[..., "OrderedDict[str, torch.Tensor]"], overwrite: bool = False) -> None:
    """Make ``fn(state_dict, arch) -> our-keyed state dict`` available as converter ``name``
    (the name a checkpoint source's ``converter:`` field uses)."""
    if name in CONVERTERS and CONVERTERS[name] is not fn and not overwrite:
        raise CheckpointError(f"converter: {name!r} is already registered; pass overwrite=True to replace it")
    CONVERTERS[name] = fn


def convert_to_ours(state_dict: StateDict, arch, fmt: str = "auto") -> "OrderedDict[str, torch.Tensor]":
    """Convert a state dict in format ``fmt`` ("auto" detects it) into our key names for ``arch``."""
    if fmt == "auto":
        fmt = detect_format(state_dict)
    if fmt not in CONVERTERS:
        raise CheckpointError(f"converter: {fmt!r} is not one of {sorted(CONVERTERS)} (others can be added with "
                              "fbnet_zoo.converters.register_converter)")
    return CONVERTERS[fmt](state_dict, arch)


__all__ = [
    "CONVERTERS", "CheckpointError", "as_model", "convert_to_ours", "detect_format", "mobile_cv_block_keys",
    "mobile_cv_key_map", "mobile_cv_stage_block_name", "mobile_cv_to_ours", "ours_to_mobile_cv",
    "register_converter", "rename_state_dict", "strip_prefix", "timm_key_map", "timm_to_ours",
]
