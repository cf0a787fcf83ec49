"""The authors' d2go detection checkpoints <-> our detectron2 adapters (key names).

d2go names (checked against models built by d2go's own code: tests/test_detection_d2go_parity.py):

* trunk stage i, block j:  ``backbone.body.trunk{i}.fbnetv2_{i}_{j}.`` (C4) or
  ``backbone.bottom_up.trunk{i}.fbnetv2_{i}_{j}.`` (FPN: d2go's FBNet is the FPN's bottom_up)
  (ours: ``backbone.body.stage{i}.{j}.`` / ``backbone.bottom_up.body.stage{i}.{j}.``)
* head bodies are Sequentials of stages, so their blocks carry a stage index ``.0.``:
  RPN ``proposal_generator.rpn_head.rpn_feature.0.fbnetv2_0_{j}.`` (ours ``rpn_feature.{j}.``),
  RoI box ``roi_heads.box_head.roi_box_conv.0.fbnetv2_0_{n}.`` (n counts every block of the
  stride-32 stage(s); ours ``roi_box_conv.stage{s}.{j}.`` or ``.{n}.``), mask
  ``roi_heads.mask_head.feature_extractor.0.fbnetv2_0_{j}.`` (ours ``mask_feature.{j}.``)
* 1x1 predictors: ``rpn_head.rpn_regressor.cls_logits`` / ``.bbox_pred`` (ours
  ``objectness_logits`` / ``anchor_deltas``), ``mask_head.predictor.mask_fcn_logits`` (ours
  ``mask_head.predictor``)
* everything detectron2 itself owns (FPN laterals/outputs, ``roi_heads.box_predictor.*``)
  keeps its name.

Inside a block the names come from ``fbnet_zoo.converters.mobile_cv_block_keys``.
"""

from __future__ import annotations

import os
from typing import Dict, Mapping, Tuple

import torch
from torch import nn

from fbnet_zoo.converters import mobile_cv_block_keys, rename_state_dict, strip_prefix

from .core import DetectionError, FBNetTrunk, LightRPNHead, StagesBoxHead


def _blocks(seq: nn.Module, prefix: str):
    """(our key prefix, block) for a Sequential of blocks or of stage Sequentials."""
    for name, child in seq.named_children():
        if isinstance(child, nn.Sequential):
            for bname, block in child.named_children():
                yield f"{prefix}{name}.{bname}.", block
        else:
            yield f"{prefix}{name}.", child


def _trunk_prefix(path: str) -> str:
    """d2go's prefix for the trunk at our module path ``path`` (``backbone.body`` under a C4
    backbone, ``backbone.bottom_up.body`` under an FPN): d2go's C4 backbone wraps its FBNet
    as ``.body`` like ours, but its FPN takes the FBNet itself as ``bottom_up``."""
    if path.endswith("bottom_up.body"):
        return path[: -len(".body")]
    return path


def _is_mask_head(module: nn.Module) -> bool:
    # core.MaskBody and the detectron2 FBNetMaskHead share this shape (blocks + 1x1 predictor).
    return isinstance(getattr(module, "mask_feature", None), nn.Sequential) and \
        isinstance(getattr(module, "predictor", None), nn.Conv2d)


def d2go_key_map(model: nn.Module) -> Dict[str, str]:
    """Our key -> d2go key for every tensor of a detectron2 model built with our adapters.

    d2go builds every head body as a Sequential of *stages* (each a Sequential of blocks),
    so head blocks carry a stage index: ``rpn_feature.0.fbnetv2_0_{j}``."""
    out: Dict[str, str] = {}
    for name, module in model.named_modules():
        p = f"{name}." if name else ""
        if isinstance(module, FBNetTrunk):
            theirs = _trunk_prefix(name)
            theirs = f"{theirs}." if theirs else ""
            for i in range(module.num_stages):
                for j, block in enumerate(getattr(module, f"stage{i}")):
                    out.update(mobile_cv_block_keys(block, f"{p}stage{i}.{j}.", f"{theirs}trunk{i}.fbnetv2_{i}_{j}."))
        elif isinstance(module, LightRPNHead):
            for j, block in enumerate(module.rpn_feature):
                out.update(mobile_cv_block_keys(block, f"{p}rpn_feature.{j}.", f"{p}rpn_feature.0.fbnetv2_0_{j}."))
            for ours, theirs in (("objectness_logits", "cls_logits"), ("anchor_deltas", "bbox_pred")):
                for t in ("weight", "bias"):
                    out[f"{p}{ours}.{t}"] = f"{p}rpn_regressor.{theirs}.{t}"
        elif isinstance(module, StagesBoxHead):
            for n, (ours_prefix, block) in enumerate(_blocks(module.roi_box_conv, f"{p}roi_box_conv.")):
                out.update(mobile_cv_block_keys(block, ours_prefix, f"{p}roi_box_conv.0.fbnetv2_0_{n}."))
        elif _is_mask_head(module):
            for j, block in enumerate(module.mask_feature):
                out.update(mobile_cv_block_keys(block, f"{p}mask_feature.{j}.",
                                                f"{p}feature_extractor.0.fbnetv2_0_{j}."))
            for t in ("weight", "bias"):
                out[f"{p}predictor.{t}"] = f"{p}predictor.mask_fcn_logits.{t}"
    for key in model.state_dict():
        out.setdefault(key, key)
    return out


def d2go_to_ours(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> "Dict[str, torch.Tensor]":
    """A d2go checkpoint's state dict (``model`` key unwrapped) -> our adapters' keys; every
    tensor must be accounted for (CheckpointError names the ones that are not)."""
    sd = strip_prefix(state_dict)
    inverse = {v: k for k, v in d2go_key_map(model).items()}
    return rename_state_dict(sd, inverse, "d2go -> ours")


def ours_to_d2go(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> "Dict[str, torch.Tensor]":
    return rename_state_dict(state_dict, d2go_key_map(model), "ours -> d2go")


# What every d2go detector was trained on (detectron2's defaults, which d2go keeps).
D2GO_INPUT_FORMAT = "BGR"
D2GO_PIXEL_MEAN = (103.53, 116.28, 123.675)
D2GO_PIXEL_STD = (1.0, 1.0, 1.0)


def split_source(pretrained: str, arch: str) -> Tuple[str, str]:
    """``"FBNetV3-G-d2go:mask_rcnn_fpn"`` -> (model, source); a bare source name keeps ``arch``."""
    if isinstance(pretrained, str) and ":" in pretrained and "://" not in pretrained \
            and not os.path.exists(pretrained):
        model, _, source = pretrained.partition(":")
        return model, source
    return arch, pretrained


def check_d2go_input(model: nn.Module) -> None:
    """DetectionError unless ``model`` (a detectron2 meta-arch) reads its input as d2go's
    detectors were trained: BGR, Caffe2 pixel mean, std 1. Other input would be silently wrong."""
    fmt = getattr(model, "input_format", None)
    mean, std = getattr(model, "pixel_mean", None), getattr(model, "pixel_std", None)
    problems = []
    if fmt is not None and fmt != D2GO_INPUT_FORMAT:
        problems.append(f"INPUT.FORMAT: {fmt!r} is not {D2GO_INPUT_FORMAT!r}")
    for key, have, want in (("MODEL.PIXEL_MEAN", mean, D2GO_PIXEL_MEAN), ("MODEL.PIXEL_STD", std, D2GO_PIXEL_STD)):
        if isinstance(have, torch.Tensor) and not torch.allclose(have.flatten().cpu().double(),
                                                                  torch.tensor(want, dtype=torch.float64)):
            problems.append(f"{key}: {[round(float(v), 3) for v in have.flatten()]} is not {list(want)}")
    if problems:
        raise DetectionError("the authors' d2go checkpoints were trained on BGR input with Caffe2 pixel statistics; "
                             "this model reads its input otherwise (" + "; ".join(problems) + "). Build it from "
                             "the authors' config (fbnet_zoo.detection.d2.d2go_config(source), "
                             "model_configs/detection/authors/), or pass check_input=False")


def load_d2go_weights(model: nn.Module, pretrained: str = "faster_rcnn_c4", arch: str = "FBNetV3-A-d2go",
                      strict: bool = True, check_input: bool = True, **kwargs):
    """Load one of the authors' d2go COCO checkpoints into a detectron2 model built with our
    adapters. ``pretrained``: ``"FBNetV3-G-d2go:mask_rcnn_fpn"``, a source name of ``arch``
    (model_configs/checkpoints/), a path or a URL (fetched and verified through
    fbnet_zoo.checkpoints; keys converted here). ``check_input``: refuse a model that does
    not read BGR input with d2go's pixel statistics (see ``check_d2go_input``)."""
    from fbnet_zoo.checkpoints import load_pretrained

    if check_input:
        check_d2go_input(model)
    arch, pretrained = split_source(pretrained, arch)
    return load_pretrained(model, pretrained, name=arch, strict=strict, converter="d2go_detection", **kwargs)


def _register() -> None:
    from fbnet_zoo.converters import CONVERTERS, register_converter

    if CONVERTERS.get("d2go_detection") is not d2go_to_ours:
        register_converter("d2go_detection", d2go_to_ours, overwrite=True)


_register()
