"""The authors' d2go detection checkpoints <-> our detectron2 adapters (key names).

d2go names (read from its builder code; shared/reference/d2go_detection_archs.json):

* trunk stage i, block j:  ``backbone.body.trunk{i}.fbnetv2_{i}_{j}.``  (ours: ``backbone.body.stage{i}.{j}.``;
  under an FPN both sit below ``backbone.bottom_up.``)
* RPN head blocks:          ``proposal_generator.rpn_head.rpn_feature.fbnetv2_0_{j}.``  (ours: ``rpn_feature.{j}.``)
  RPN 1x1 convs:            ``rpn_head.rpn_regressor.cls_logits`` / ``.bbox_pred``
                            (ours: ``objectness_logits`` / ``anchor_deltas``)
* RoI box head blocks:      ``roi_heads.box_head.roi_box_conv.fbnetv2_0_{n}.``, n counting every block
                            of the stride-32 stage(s)  (ours: ``roi_box_conv.stage{s}.{j}.`` or ``.{n}.``)
* everything detectron2 itself owns (``roi_heads.box_predictor.*``, ``pixel_mean``...) keeps its name.

Inside a block the names come from ``fbnet_zoo.converters.mobile_cv_block_keys``. The mask
head's d2go names are not in our reference, so its keys are kept as they are (a d2go
Mask R-CNN checkpoint then fails with its mask-head keys named).
"""

from __future__ import annotations

from typing import Dict, Mapping

import torch
from torch import nn

from fbnet_zoo.converters import mobile_cv_block_keys, rename_state_dict, strip_prefix

from .core import FBNetTrunk, LightRPNHead, StagesBoxHead


def _blocks(seq: nn.Module, prefix: str):
    """(our key prefix, block) for a Sequential of blocks or of stage Sequentials."""
    for name, child in seq.named_children():
        if isinstance(child, nn.Sequential):
            for bname, block in child.named_children():
                yield f"{prefix}{name}.{bname}.", block
        else:
            yield f"{prefix}{name}.", child


def d2go_key_map(model: nn.Module) -> Dict[str, str]:
    """Our key -> d2go key for every tensor of a detectron2 model built with our adapters."""
    out: Dict[str, str] = {}
    for name, module in model.named_modules():
        p = f"{name}." if name else ""
        if isinstance(module, FBNetTrunk):
            for i in range(module.num_stages):
                for j, block in enumerate(getattr(module, f"stage{i}")):
                    out.update(mobile_cv_block_keys(block, f"{p}stage{i}.{j}.", f"{p}trunk{i}.fbnetv2_{i}_{j}."))
        elif isinstance(module, LightRPNHead):
            for j, block in enumerate(module.rpn_feature):
                out.update(mobile_cv_block_keys(block, f"{p}rpn_feature.{j}.", f"{p}rpn_feature.fbnetv2_0_{j}."))
            for ours, theirs in (("objectness_logits", "cls_logits"), ("anchor_deltas", "bbox_pred")):
                for t in ("weight", "bias"):
                    out[f"{p}{ours}.{t}"] = f"{p}rpn_regressor.{theirs}.{t}"
        elif isinstance(module, StagesBoxHead):
            for n, (ours_prefix, block) in enumerate(_blocks(module.roi_box_conv, f"{p}roi_box_conv.")):
                out.update(mobile_cv_block_keys(block, ours_prefix, f"{p}roi_box_conv.fbnetv2_0_{n}."))
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


def load_d2go_weights(model: nn.Module, pretrained="faster_rcnn_c4", arch: str = "FBNetV3-A-d2go",
                      strict: bool = True, **kwargs):
    """Load one of the authors' d2go COCO checkpoints (a source name of ``arch`` from
    model_configs/checkpoints/, a path or a URL) into a detectron2 model built with our
    adapters: fetched and verified through fbnet_zoo.checkpoints, keys converted here."""
    from fbnet_zoo.checkpoints import load_pretrained

    return load_pretrained(model, pretrained, name=arch, strict=strict, converter="d2go_detection", **kwargs)


def _register() -> None:
    from fbnet_zoo.converters import CONVERTERS, register_converter

    if CONVERTERS.get("d2go_detection") is not d2go_to_ours:
        register_converter("d2go_detection", d2go_to_ours, overwrite=True)


_register()
