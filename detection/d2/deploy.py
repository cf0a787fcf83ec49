"""Deploying a detectron2 detector built with our adapters: BatchNorm folded, the authors'
test-time proposal count, optional channels_last, and a TorchScript export that keeps the
whole post-processing (box decoding, per-class NMS, score threshold, mask pasting inputs).

    >>> fast = deploy_detector(model, test_proposals=30)          # eval copy, BN folded
    >>> ts = export_torchscript(fast, image, "detector.ts")       # traced, checked against eager
    >>> boxes, classes, scores, *rest = ts(image)                 # CHW float image, model's format

The export traces detectron2's ``TracingAdapter`` (its own export path): the graph takes one
CHW image (any size: shapes are traced symbolically) and returns the flattened ``Instances``
fields in detectron2's order (``pred_boxes``, ``pred_classes``, ``[pred_keypoint_heatmaps,
pred_keypoints]``, ``[pred_masks]``, ``scores``); ``outputs_schema`` rebuilds ``Instances``.
"""

from __future__ import annotations

import copy
import logging
from typing import List, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from detectron2.export import TracingAdapter
from detectron2.layers import Conv2d as D2Conv2d
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from fbnet_zoo.deploy import fold_bn, strip_identities
from fbnet_zoo.errors import DetectionError
from fbnet_zoo.io_utils import atomic_path

logger = logging.getLogger(__name__)

# The authors' test-time RPN top-k for their C4 detectors (d2go configs: PRE_NMS_TOPK_TEST 1000,
# POST_NMS_TOPK_TEST 30; "we use smaller numbers" than detectron2's 6000 / 1000).
AUTHORS_C4_TEST_TOPK = {"pre_nms_topk": 1000, "test_proposals": 30}

__all__ = ["AUTHORS_C4_TEST_TOPK", "BOX_FIELDS", "ExportedDetector", "cap_pre_nms_topk_for_export", "deploy_detector",
           "export_pre_nms_topk", "export_torchscript", "instances_from_outputs"]

# the flat outputs of a Faster R-CNN export, in the order detectron2's TracingAdapter flattens them
BOX_FIELDS = ("pred_boxes", "pred_classes", "scores")


def _frozen_to_bn(module: nn.Module) -> nn.Module:
    """FrozenBatchNorm2d -> an eval-mode BatchNorm2d with the same statistics, so that
    ``fold_bn`` folds it like any other (FREEZE_AT / FrozenBN models)."""
    for name, child in list(module.named_children()):
        if isinstance(child, FrozenBatchNorm2d):
            bn = nn.BatchNorm2d(child.num_features, eps=child.eps).eval()
            with torch.no_grad():
                bn.weight.copy_(child.weight)
                bn.bias.copy_(child.bias)
                bn.running_mean.copy_(child.running_mean)
                bn.running_var.copy_(child.running_var)
            setattr(module, name, bn)
        else:
            _frozen_to_bn(child)
    return module


def _fold_d2_conv_norms(module: nn.Module) -> int:
    """Fold the BatchNorm inside every detectron2 ``Conv2d`` (``conv.norm``: the FPN's lateral /
    output convs with MODEL.FPN.NORM, as the authors' FPN models have) into its weights, in
    place (eval mode); returns how many."""
    n = 0
    for conv in module.modules():
        if isinstance(conv, D2Conv2d) and isinstance(conv.norm, nn.BatchNorm2d):
            plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
            plain.weight, plain.bias = conv.weight, conv.bias
            fused = fuse_conv_bn_eval(plain.eval(), conv.norm.eval())
            conv.weight, conv.bias = fused.weight, fused.bias
            conv.norm = None
            n += 1
    return n


def deploy_detector(model: nn.Module, test_proposals: Optional[int] = None, pre_nms_topk: Optional[int] = None,
                    channels_last: bool = False) -> nn.Module:
    """An eval-mode copy of a detectron2 ``GeneralizedRCNN`` for inference: every conv -> BN
    pair of the FBNet backbone and heads folded into the conv (``fbnet_zoo.deploy.fold_bn``;
    the FPN's normed lateral / output convs too),
    BN-free placeholders removed, the RPN keeping its ``pre_nms_topk`` best anchors per level
    before NMS and ``test_proposals`` boxes after it (the authors test their C4 models with
    1000 / 30: ``AUTHORS_C4_TEST_TOPK``; None keeps the config's), channels_last weights if
    asked. Outputs equal the original's (with the same top-k) up to float rounding."""
    if not hasattr(model, "proposal_generator") or not hasattr(model, "roi_heads"):
        raise DetectionError(f"deploy_detector: expected a detectron2 GeneralizedRCNN, got {type(model).__name__}")
    out = _frozen_to_bn(copy.deepcopy(model).eval())
    fold_bn(out, inplace=True)
    out.folded_bn += _fold_d2_conv_norms(out)
    strip_identities(out)
    rpn = out.proposal_generator
    for option, value, attr in (("test_proposals", test_proposals, "post_nms_topk"),
                                ("pre_nms_topk", pre_nms_topk, "pre_nms_topk")):
        if value is None:
            continue
        if int(value) < 1:
            raise DetectionError(f"{option}: {value!r} must be a positive number of RPN boxes")
        setattr(rpn, attr, {**getattr(rpn, attr), False: int(value)})
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    logger.info("deploy_detector: folded %d BatchNorm layers, RPN test top-k %s / %s, channels_last=%s",
                getattr(out, "folded_bn", 0), rpn.pre_nms_topk[False], rpn.post_nms_topk[False], channels_last)
    return out


def _inference(model: nn.Module, image: torch.Tensor) -> Instances:
    return model.inference([{"image": image}], do_postprocess=False)[0]


def export_torchscript(model: nn.Module, image: torch.Tensor, path: Optional[str] = None,
                       atol: float = 1e-3, freeze: bool = False) -> torch.jit.ScriptModule:
    """Trace ``model`` (deploy it first: ``deploy_detector``) on ``image`` (CHW, the model's
    input format and pixel range), check the traced outputs against eager on that image
    (DetectionError above ``atol``, relative to the largest value), save to ``path``
    atomically when given. ``freeze``: ``torch.jit.freeze`` the traced module (weights become
    constants; what int8 graphs need to lose their per-op attribute lookups). The module's
    ``outputs_schema`` attribute is not kept in the file; ``instances_from_outputs`` rebuilds
    ``Instances`` from the flat tensors."""
    model = model.eval()
    adapter = TracingAdapter(model, (image,), _inference)
    with torch.no_grad():
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
        if freeze:
            traced = torch.jit.freeze(traced.eval())
        want = adapter(*adapter.flattened_inputs)
        got = traced(*adapter.flattened_inputs)
    if len(want) != len(got):
        raise DetectionError(f"export_torchscript: the traced detector returns {len(got)} tensors, eager {len(want)}")
    for i, (a, b) in enumerate(zip(want, got)):
        if a.shape != b.shape:
            raise DetectionError(f"export_torchscript: output {i} has shape {tuple(b.shape)} traced, "
                                 f"{tuple(a.shape)} eager" + _nms_path_hint(model))
        if a.numel() and a.is_floating_point():
            err = float((a - b).abs().max())
            if err > atol * max(1.0, float(a.abs().max())):
                raise DetectionError(f"export_torchscript: output {i} differs from eager by {err:.3g} (atol {atol})"
                                     + _nms_path_hint(model))
    traced.outputs_schema = adapter.outputs_schema  # type: ignore[attr-defined]
    if path is not None:
        with atomic_path(path) as tmp:
            torch.jit.save(traced, tmp)
        logger.info("export_torchscript: wrote %s", path)
    return traced


# torchvision's batched_nms runs per-level NMS ("vanilla") in eager mode above this many box
# coordinates on CPU, and one offset-coordinate NMS when traced: the same boxes survive, but
# equal scores may come out in another order, and the RPN's post-NMS top-k then keeps other ties
# (int8 objectness logits take few distinct values: ties are common).
_TV_VANILLA_NMS_NUMEL = 4000


def export_pre_nms_topk(model: nn.Module) -> Optional[int]:
    """The largest RPN test pre-NMS top-k (per level) for which ``model``'s RPN NMS takes the
    same path eager and traced, when its current one is larger (multi-level RPNs, e.g. FPN:
    200 for 5 levels); None when the current one is fine (every C4 model)."""
    rpn = getattr(model, "proposal_generator", None)
    levels = len(getattr(rpn, "in_features", ()))
    most = _TV_VANILLA_NMS_NUMEL // (4 * max(levels, 1))
    if levels < 2 or rpn.pre_nms_topk[False] <= most:
        return None
    return most


def cap_pre_nms_topk_for_export(model: nn.Module) -> nn.Module:
    """``model`` (in place) with its RPN test pre-NMS top-k lowered to ``export_pre_nms_topk``
    when needed, so that its TorchScript export equals it; logged."""
    most = export_pre_nms_topk(model)
    if most is not None:
        rpn = model.proposal_generator
        logger.info("RPN test pre-NMS top-k %d -> %d per level for the export: with %d levels above %d boxes "
                    "torchvision's batched_nms orders equal scores differently in eager and traced mode",
                    rpn.pre_nms_topk[False], most, len(rpn.in_features), most * len(rpn.in_features))
        rpn.pre_nms_topk = {**rpn.pre_nms_topk, False: most}
    return model


def _nms_path_hint(model: nn.Module) -> str:
    most = export_pre_nms_topk(model)
    if most is None:
        return ""
    rpn = model.proposal_generator
    return (f"; the RPN keeps up to {rpn.pre_nms_topk[False]} boxes on each of its {len(rpn.in_features)} levels "
            f"before NMS, where torchvision's batched_nms orders equal scores differently in eager and traced "
            f"mode (int8 objectness logits tie often): deploy with pre_nms_topk <= {most} "
            f"(cap_pre_nms_topk_for_export; MODEL.RPN.PRE_NMS_TOPK_TEST) for an export equal to eager")


def instances_from_outputs(outputs: Tuple[torch.Tensor, ...], image_size: Tuple[int, int],
                           fields: List[str]) -> Instances:
    """``Instances`` of ``image_size`` from a loaded export's flat outputs, ``fields`` in the
    order the export returns them (sorted field names, as detectron2 flattens them)."""
    if len(outputs) != len(fields):
        raise DetectionError(f"instances_from_outputs: {len(outputs)} outputs for fields {fields}")
    inst = Instances(image_size)
    for name, value in zip(fields, outputs):
        inst.set(name, Boxes(value) if name == "pred_boxes" else value)
    return inst


class ExportedDetector(nn.Module):
    """An exported detector (``export_torchscript`` / ``export_int8_detector``, or the file
    ``torch.jit.load``-ed) behind detectron2's model interface -- a list of ``{"image", "height",
    "width"}`` in, ``[{"instances": Instances}]`` out, boxes rescaled to height x width as
    ``GeneralizedRCNN`` does -- so that detectron2's evaluators score the file itself.
    ``fields``: the export's output fields in order, before its trailing image size
    (``BOX_FIELDS`` for Faster R-CNN)."""

    def __init__(self, exported: torch.jit.ScriptModule, fields=BOX_FIELDS):
        super().__init__()
        self.exported = exported
        self.fields = list(fields)

    def forward(self, batched_inputs):
        results = []
        for x in batched_inputs:
            image = x["image"].float()
            size = tuple(image.shape[-2:])
            # the export returns the fields, then the image size it ran at
            inst = instances_from_outputs(tuple(self.exported(image))[:len(self.fields)], size, self.fields)
            results.append({"instances": detector_postprocess(inst, x.get("height", size[0]),
                                                              x.get("width", size[1]))})
        return results
