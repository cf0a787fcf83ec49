"""int8 detectors: the whole detectron2 detector built with our FBNet adapters quantized
(post-training static or quantization-aware training), exported as one TorchScript file
with the post-processing.

    >>> fast = deploy_detector(model, **AUTHORS_C4_TEST_TOPK)              # BN folded
    >>> q = quantize_detector(fast, calibration_images)                     # PTQ, int8 parts
    >>> ts = export_int8_detector(q, image, "detector_int8.ts")             # traced, frozen, checked

    >>> qat = prepare_detector_qat(model, example_image)    # fake-quant parts, train mode: train it
    >>> q = convert_detector_qat(qat)                        # the int8 detector

What runs int8 (``fbnet_zoo.quantize``'s FX graph mode flow, x86 engine on x86 / qnnpack on ARM):
every FBNet part of the detector, each one an FX graph with a quantize stub at its input and
a dequantize stub at its outputs --

* ``backbone``: C4: the FBNet trunk (stem .. stride-16 stage); FPN: the whole FPN backbone
  (``GraphBackbone``) -- the bottom-up FBNet trunk, the lateral and output convs, the
  top-down nearest upsampling and sums, and the top block's max pool (P6), one graph
  with one int8 output per level;
* ``rpn_head``: the FBNet RPN blocks and the objectness / anchor-delta convs, one graph run on
  each level;
* ``box_head``: the RoI box head (C4: the stride-32 stage(s) on every pooled RoI, then average
  pooling);
* ``mask_head`` / ``keypoint_head``: the FBNet mask / keypoint body *and* its predictor
  (the transposed conv / upsampling included).

What stays float, because PyTorch has no quantized kernel for it or it is bookkeeping: input
normalisation, anchor generation, box decoding, NMS, RoIAlign (the FPN's multi-level pooler
reads the dequantized levels), the box predictor (two small Linear layers on N x C
features), mask pasting and keypoint decoding. Those are exactly the boundaries where the
stubs sit, so the graph does one quantize per part input and one dequantize per part output.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.ao.quantization import FakeQuantizeBase

from detectron2.config import CfgNode as CN
from detectron2.engine import hooks
from detectron2.layers import Conv2d as D2Conv2d
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import Backbone
from detectron2.modeling.backbone.fpn import FPN

from fbnet_zoo.model import forward_to_features
from fbnet_zoo.quantize import convert_qat, freeze_qat_bn_stats, freeze_qat_observers, prepare_qat, quantize_static

from ..core import DetectionError, LightRPNHead, StagesBoxHead
from .deploy import export_torchscript
from .heads import FBNetKeypointHead, FBNetMaskHead

logger = logging.getLogger(__name__)

PARTS = ("backbone", "rpn_head", "box_head", "mask_head", "keypoint_head")
# RoI heads whose FBNet body and predictor become one graph: (part, head class, body attribute)
_ROI_HEAD_PARTS = (("mask_head", FBNetMaskHead, "mask_feature"),
                   ("keypoint_head", FBNetKeypointHead, "keypoint_feature"))

__all__ = ["PARTS", "GraphBackbone", "GraphBoxHead", "LevelwiseRPNHead", "MixedTrunk", "RPNLevel", "TrunkTail",
           "add_quantization_config", "convert_detector_qat", "export_int8_detector", "freeze_detector_qat",
           "int8_parts", "part_inputs", "part_slots", "prepare_detector_qat", "qat_schedule_hook",
           "quantize_detector", "wrap_parts"]


class RPNLevel(nn.Module):
    """One level of an FBNet RPN head as a one-tensor-in module (what FX quantizes):
    ``x -> (objectness logits, anchor deltas)``."""

    def __init__(self, head: LightRPNHead):
        super().__init__()
        self.rpn_feature = head.rpn_feature
        self.objectness_logits = head.objectness_logits
        self.anchor_deltas = head.anchor_deltas

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        t = self.rpn_feature(x)
        return self.objectness_logits(t), self.anchor_deltas(t)


class LevelwiseRPNHead(nn.Module):
    """detectron2's RPN head contract (list of maps -> (logits list, deltas list)) over one
    per-level module ``level`` (float, QAT or int8 graph)."""

    def __init__(self, level: nn.Module):
        super().__init__()
        self.level = level

    def forward(self, features: List[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        logits, deltas = [], []
        for x in features:
            a, b = self.level(x)
            logits.append(a)
            deltas.append(b)
        return logits, deltas


class GraphBoxHead(nn.Module):
    """An RoI box head module ``graph`` (float, QAT or int8) with the ``output_shape`` that
    detectron2's box predictor reads."""

    def __init__(self, graph: nn.Module, output_shape):
        super().__init__()
        self.graph = graph
        self._output_shape = output_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    @property
    def output_shape(self):
        return self._output_shape


def _plain_convs(module: nn.Module, replaced: Dict[nn.Module, nn.Module]) -> nn.Module:
    """Every detectron2 ``Conv2d`` (conv with its norm and activation inside, and an
    empty-input check that FX cannot trace in train mode) -> ``nn.Conv2d`` followed by its
    norm and activation in an ``nn.Sequential``, the same weights (shared), in place: the
    pattern FX fuses (conv-BN(-ReLU)) and quantizes. ``replaced`` gets {old: new}."""
    for name, child in list(module.named_children()):
        if isinstance(child, D2Conv2d):
            conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                             child.dilation, child.groups, child.bias is not None, child.padding_mode)
            conv.weight = child.weight
            if child.bias is not None:
                conv.bias = child.bias
            layers = [conv] + [m for m in (child.norm, child.activation) if m is not None]
            if any(not isinstance(m, nn.Module) for m in layers):
                raise DetectionError(f"{name}: a detectron2 Conv2d with a functional activation "
                                     f"({child.activation!r}) has no module FX can quantize")
            new = nn.Sequential(*layers).train(child.training) if len(layers) > 1 else conv
            setattr(module, name, new)
            replaced[child] = new
        else:
            _plain_convs(child, replaced)
    return module


class GraphBackbone(Backbone):
    """A detectron2 FPN backbone as one module ``graph`` (the FPN itself, or its QAT / int8
    FX graph): image tensor in, ``{p2: .., p6: ..}`` out, with the FPN's output shapes,
    size divisibility and padding constraints (what ``GeneralizedRCNN.preprocess_image``
    reads). The FPN's detectron2 convs become plain ones first (``_plain_convs``)."""

    def __init__(self, fpn: FPN):
        super().__init__()
        shapes = fpn.output_shape()
        self._out_features = list(fpn._out_features)
        self._out_feature_channels = {k: v.channels for k, v in shapes.items()}
        self._out_feature_strides = {k: v.stride for k, v in shapes.items()}
        self._size_divisibility = fpn.size_divisibility
        self._padding_constraints = dict(fpn.padding_constraints)
        replaced: Dict[nn.Module, nn.Module] = {}
        _plain_convs(fpn, replaced)
        # FPN.forward walks Python lists of its convs (registered under other names): the new ones
        fpn.lateral_convs = [replaced.get(m, m) for m in fpn.lateral_convs]
        fpn.output_convs = [replaced.get(m, m) for m in fpn.output_convs]
        self.graph = fpn

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.graph(x)

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return self._padding_constraints


class MixedTrunk(nn.Module):
    """An FBNet trunk whose first stages run float (``float_stages``, a Sequential) and the
    rest in ``tail`` (an int8 graph of ``TrunkTail``): int8 convolutions with 3-16 input
    channels at stride 2 (the stem and the first stage) are slower than fp32 ones on x86."""

    def __init__(self, float_stages: nn.Module, tail: nn.Module):
        super().__init__()
        self.float_stages = float_stages
        self.tail = tail

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.tail(self.float_stages(x))


class TrunkTail(nn.Module):
    """Stages ``first``.. of an ``FBNetTrunk`` returning the trunk's features (all of which
    must come from those stages), fed the output of stage ``first - 1``."""

    def __init__(self, trunk: nn.Module, first: int):
        super().__init__()
        early = [f.name for f in trunk.features if f.stage < first]
        if early:
            raise DetectionError(f"float_stages: {first} would leave the trunk's feature(s) {early} float; "
                                 f"at most {min(f.stage for f in trunk.features)} for this trunk")
        self.features = [dataclasses.replace(f, stage=f.stage - first) for f in trunk.features]
        self.num_stages = trunk.num_stages - first
        for i in range(self.num_stages):
            self.add_module(f"stage{i}", getattr(trunk, f"stage{i + first}"))

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return forward_to_features([getattr(self, f"stage{i}") for i in range(self.num_stages)], x, self.features)


def _fbnet_bottom_up(fpn: nn.Module) -> bool:
    return isinstance(fpn, FPN) and isinstance(getattr(fpn.bottom_up, "body", None), nn.Module)


def _backbone_slot(model: nn.Module) -> Optional[Tuple[nn.Module, str]]:
    """Where the backbone part sits: C4 -> the FBNetBackbone's trunk ``body``; FPN (wrapped
    by ``wrap_parts``) -> the ``GraphBackbone``'s ``graph``."""
    backbone = model.backbone
    if isinstance(backbone, GraphBackbone):
        return backbone, "graph"
    if isinstance(getattr(backbone, "body", None), nn.Module):
        return backbone, "body"
    return None


def wrap_parts(model: nn.Module) -> Dict[str, Tuple[nn.Module, str]]:
    """Make every FBNet part of ``model`` (in place) a one-tensor-in submodule, and return
    where each sits: ``{part: (parent, attribute)}`` (``part_slots``). Already wrapped parts
    are found again."""
    if _fbnet_bottom_up(model.backbone):
        model.backbone = GraphBackbone(model.backbone)
    rpn = getattr(model, "proposal_generator", None)
    if rpn is not None and isinstance(rpn.rpn_head, LightRPNHead):
        rpn.rpn_head = LevelwiseRPNHead(RPNLevel(rpn.rpn_head))
    heads = model.roi_heads
    box = getattr(heads, "box_head", None)
    if isinstance(box, StagesBoxHead):
        heads.box_head = GraphBoxHead(box, box.output_shape)
    for part, cls, attr in _ROI_HEAD_PARTS:
        head = getattr(heads, part, None) if getattr(heads, part.split("_")[0] + "_on", False) else None
        if isinstance(head, cls) and not isinstance(head.predictor, nn.Identity):
            # body and predictor in one graph: no round trip between them
            setattr(head, attr, nn.Sequential(getattr(head, attr), head.predictor))
            head.predictor = nn.Identity()
    return part_slots(model)


def _plain_bn(module: nn.Module) -> nn.Module:
    """Every BatchNorm flavour (FrozenBN, naiveSyncBN, SyncBN) -> nn.BatchNorm2d with the same
    parameters and statistics, in place: FX's conv-BN fusion patterns match nn.BatchNorm2d
    only. A FrozenBN stays frozen (parameters without grad)."""
    for name, child in list(module.named_children()):
        frozen = isinstance(child, FrozenBatchNorm2d)
        if frozen or (isinstance(child, nn.modules.batchnorm._BatchNorm) and type(child) is not nn.BatchNorm2d):
            bn = nn.BatchNorm2d(child.num_features, eps=child.eps,
                                momentum=0.1 if frozen else child.momentum)
            with torch.no_grad():
                for t in ("weight", "bias", "running_mean", "running_var"):
                    getattr(bn, t).copy_(getattr(child, t))
            if frozen:
                bn.weight.requires_grad_(False)
                bn.bias.requires_grad_(False)
            setattr(module, name, bn.train(child.training))
        else:
            _plain_bn(child)
    return module


def part_inputs(model: nn.Module, slots: Dict[str, Tuple[nn.Module, str]],
                images: Sequence[torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
    """The input tensors each part sees while ``model`` runs inference on ``images`` (CHW)."""
    seen: Dict[str, List[torch.Tensor]] = {p: [] for p in slots}
    hooks = []
    for part, (parent, attr) in slots.items():
        def hook(module, args, out, part=part):
            x = args[0]
            seen[part].extend(x if isinstance(x, (list, tuple)) else [x])
        hooks.append(getattr(parent, attr).register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for image in images:
                model.inference([{"image": image}], do_postprocess=False)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return seen


def _selected(slots: Dict[str, Tuple[nn.Module, str]], parts: Optional[Sequence[str]]) -> List[str]:
    if parts is None:
        return list(slots)
    for p in parts:
        if p not in PARTS:
            raise DetectionError(f"parts: {p!r} is not one of {list(PARTS)}")
        if p not in slots:
            raise DetectionError(f"parts: {p!r}: the detector has no FBNet {p} (it has {list(slots)})")
    return list(parts)


def int8_parts(model: nn.Module) -> List[str]:
    """The parts of ``model`` that hold quantized (int8) modules, in PARTS order."""
    slots = part_slots(model)
    return [p for p, (parent, attr) in slots.items()
            if any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in getattr(parent, attr).modules())]


def part_slots(model: nn.Module) -> Dict[str, Tuple[nn.Module, str]]:
    """Where the FBNet parts of a wrapped detector (``wrap_parts``) sit (no change to it)."""
    slots = {}
    backbone = _backbone_slot(model)
    if backbone is not None:
        slots["backbone"] = backbone
    rpn = getattr(model, "proposal_generator", None)
    if rpn is not None and isinstance(rpn.rpn_head, LevelwiseRPNHead):
        slots["rpn_head"] = (rpn.rpn_head, "level")
    if isinstance(getattr(model.roi_heads, "box_head", None), GraphBoxHead):
        slots["box_head"] = (model.roi_heads.box_head, "graph")
    for part, _, attr in _ROI_HEAD_PARTS:
        head = getattr(model.roi_heads, part, None)
        if head is not None and isinstance(getattr(head, "predictor", None), nn.Identity):
            slots[part] = (head, attr)
    return slots


def quantize_detector(model: nn.Module, images: Sequence[torch.Tensor], backend: Optional[str] = None,
                      parts: Optional[Sequence[str]] = None, float_stages: int = 0,
                      reduce_range: Union[None, bool, str] = None) -> nn.Module:
    """An int8 copy of a detectron2 detector built with our FBNet adapters, by post-training
    static quantization (``fbnet_zoo.quantize.quantize_static`` on each part).

    images: calibration images (CHW, the model's input format and pixel range, e.g. a few
    hundred training images); every part's activation ranges are observed on the inputs it
    gets while the float model runs on them. parts: which of PARTS to quantize (default:
    every FBNet part the detector has). float_stages: keep the trunk's first stages float
    (``MixedTrunk``; e.g. 2 = the stem and the stride-2 stage, where int8 kernels on 3-16
    channels lose to fp32). reduce_range: the bit split, as in ``quantize_static`` (None: its
    default; x86: 8-bit activations, 7-bit weights). Deploy the model first (``deploy_detector``: BN
    folded, test top-k); ``model`` is not changed."""
    if not images:
        raise DetectionError("quantize_detector: images is empty; calibration needs images like the test images")
    if not hasattr(model, "proposal_generator") or not hasattr(model, "roi_heads"):
        raise DetectionError(f"quantize_detector: expected a detectron2 GeneralizedRCNN, got {type(model).__name__}")
    model = copy.deepcopy(model).eval()
    slots = wrap_parts(model)
    chosen = _selected(slots, parts)
    if not chosen:
        raise DetectionError("quantize_detector: the detector has no FBNet part to quantize")
    if float_stages < 0:
        raise DetectionError(f"float_stages: {float_stages} must be >= 0")
    seen = part_inputs(model, slots, images)
    for part in chosen:
        parent, attr = slots[part]
        if part == "backbone" and float_stages:
            module = getattr(parent, attr)
            fpn = module if isinstance(module, FPN) else None
            trunk = fpn.bottom_up.body if fpn is not None else module
            tail = TrunkTail(trunk, float_stages)  # checks float_stages first
            head = nn.Sequential(*[getattr(trunk, f"stage{i}") for i in range(float_stages)])
            if fpn is not None:  # the FPN on the trunk's later stages: one graph
                fpn.bottom_up.body = tail
                tail = fpn
            with torch.no_grad():
                batches = [head(x) for x in seen[part]]
            graph = quantize_static(tail, batches, backend=backend, example=batches[0], reduce_range=reduce_range)
            setattr(parent, attr, MixedTrunk(head, graph))
            continue
        batches = [x for x in seen[part] if x.numel()]
        if not batches:
            raise DetectionError(f"quantize_detector: {part} got no input on the {len(images)} calibration images "
                                 "(no detections reach it); use more / more typical images or lower "
                                 "MODEL.ROI_HEADS.SCORE_THRESH_TEST while calibrating")
        graph = quantize_static(getattr(parent, attr), batches, backend=backend, example=batches[0],
                                reduce_range=reduce_range)
        setattr(parent, attr, graph)
    logger.info("quantize_detector: %s int8, calibrated on %d images", ", ".join(chosen), len(images))
    return model


def prepare_detector_qat(model: nn.Module, example_image: torch.Tensor, backend: Optional[str] = None,
                         parts: Optional[Sequence[str]] = None) -> nn.Module:
    """A copy of ``model`` (a float detectron2 detector built with our adapters, trained or
    pretrained weights loaded) for quantization-aware training: each FBNet part (PARTS, or
    ``parts``) becomes an FX QAT graph -- conv-BN(-act) fused, weights and activations
    fake-quantized -- in train mode. Train it with detectron2's trainer like the float model;
    then ``convert_detector_qat``. ``example_image`` (CHW, the model's input format) gives
    each part an example input to trace with. BN of every flavour becomes nn.BatchNorm2d
    first (what the fusion needs); FrozenBN stays without gradients."""
    if not hasattr(model, "proposal_generator") or not hasattr(model, "roi_heads"):
        raise DetectionError(f"prepare_detector_qat: expected a detectron2 GeneralizedRCNN, got {type(model).__name__}")
    model = _plain_bn(copy.deepcopy(model))
    slots = wrap_parts(model)
    chosen = _selected(slots, parts)
    seen = part_inputs(model, slots, [example_image])
    for part in chosen:
        parent, attr = slots[part]
        if not seen[part]:
            raise DetectionError(f"prepare_detector_qat: {part} was not run on the example image")
        example = seen[part][0]
        example = torch.zeros((max(1, example.shape[0]),) + tuple(example.shape[1:]), dtype=example.dtype)
        setattr(parent, attr, prepare_qat(getattr(parent, attr), backend=backend, example=example))
    logger.info("prepare_detector_qat: %s prepared for QAT", ", ".join(chosen))
    return model.train()


def freeze_detector_qat(model: nn.Module, bn: bool = False, observers: bool = False) -> None:
    """Late-QAT switches on a ``prepare_detector_qat`` model: stop updating the fused BN
    statistics (``bn``) and / or the quantization ranges (``observers``)."""
    for parent, attr in part_slots(model).values():
        graph = getattr(parent, attr)
        if bn:
            freeze_qat_bn_stats(graph)
        if observers:
            freeze_qat_observers(graph)


def convert_detector_qat(model: nn.Module, backend: Optional[str] = None) -> nn.Module:
    """The int8 detector of a QAT-trained ``prepare_detector_qat`` model (a copy, eval mode)."""
    model = copy.deepcopy(model).eval()
    converted = []
    for part, (parent, attr) in part_slots(model).items():
        graph = getattr(parent, attr)
        if isinstance(graph, torch.fx.GraphModule) and any(isinstance(m, FakeQuantizeBase) for m in graph.modules()):
            setattr(parent, attr, convert_qat(graph, backend=backend))
            converted.append(part)
    if not converted:
        raise DetectionError("convert_detector_qat: no QAT part found; expected a model from prepare_detector_qat")
    logger.info("convert_detector_qat: %s converted to int8", ", ".join(converted))
    return model


def export_int8_detector(model: nn.Module, image: torch.Tensor, path: Optional[str] = None,
                         atol: float = 1e-4) -> torch.jit.ScriptModule:
    """One TorchScript file of an int8 detector (``quantize_detector`` / ``convert_detector_qat``)
    with the whole post-processing: traced through detectron2's TracingAdapter like the float
    export (``deploy.export_torchscript``) and frozen (the quantized weights become constants,
    Python attribute lookups go), checked against the eager int8 model on ``image``."""
    return export_torchscript(model, image, path, atol=atol, freeze=True)


def add_quantization_config(cfg: CN) -> CN:
    """Add the QUANTIZATION options (idempotent; d2go's names). Returns ``cfg``.

    BACKEND: "" (x86 on x86 CPUs, qnnpack on ARM: fbnet_zoo.quantize.default_backend) | fbgemm | x86 | onednn | qnnpack.
    QAT.ENABLED: train the detector quantization-aware (tools/train_net.py --qat sets it).
    QAT.FREEZE_BN_ITER / QAT.FREEZE_OBSERVER_ITER: the iteration from which the fused BN
    statistics / the quantization ranges stop updating, d2go's semantics (frozen before that
    iteration runs; 0: from the start; -1: never). Defaults 0 / -1.
    QAT.EXPORT: after training, convert to int8, evaluate it and write model_int8.ts to OUTPUT_DIR.

    Why FREEZE_BN_ITER is 0 where d2go's default is START_ITER + 2000: d2go switches QAT on late
    in one long float training (START_ITER 35000 of 40000) at large batch, where BN statistics
    are still being learnt. Ours starts QAT from trained float weights (MODEL.WEIGHTS), usually
    with few images per batch: live statistics then only drift to the last small batches, and
    the int8 model inherits them. Measured on the toy COCO set (benchmarks/detection_int8.py,
    ``freeze_bn_study`` in benchmarks/results/detection_int8.json; README "Freezing BN"):
    100 QAT iterations at 2 images per batch, int8 box AP with BN frozen from the start vs at
    iteration 25 / 50 / never: from the start was best (27.6 mean AP vs 22.6 never). Measured on
    C4; on a badly trained toy FPN live BN won (README "FPN int8 on the toy set"): a model whose QAT
    graph scores far above its float self wants -1. FREEZE_OBSERVER_ITER stays -1 (d2go: START_ITER + 3000): the
    ranges keep following the weights unless a schedule says otherwise.
    """
    if "QUANTIZATION" in cfg:
        return cfg
    cfg.QUANTIZATION = CN()
    cfg.QUANTIZATION.BACKEND = ""
    cfg.QUANTIZATION.QAT = CN()
    cfg.QUANTIZATION.QAT.ENABLED = False
    cfg.QUANTIZATION.QAT.FREEZE_BN_ITER = 0
    cfg.QUANTIZATION.QAT.FREEZE_OBSERVER_ITER = -1
    cfg.QUANTIZATION.QAT.EXPORT = True
    return cfg


def qat_schedule_hook(model_of: Callable[[], nn.Module], freeze_bn_iter: int, freeze_observer_iter: int):
    """A detectron2 hook that applies the late-QAT switches with d2go's semantics: before
    iteration ``trainer.iter`` runs, BN statistics freeze once ``trainer.iter >= freeze_bn_iter``
    (0: from the first iteration; N: iterations 0..N-1 train with live statistics) and the
    quantization ranges once ``trainer.iter >= freeze_observer_iter`` (-1: never). Checked on
    every step, so a run resumed past the iteration freezes again (the switches are module
    flags, not saved in checkpoints)."""
    done = {"bn": freeze_bn_iter < 0, "observers": freeze_observer_iter < 0}

    def before_step(trainer):
        it = trainer.iter
        if not done["bn"] and it >= freeze_bn_iter:
            freeze_detector_qat(model_of(), bn=True)
            done["bn"] = True
            logger.info("QAT: BN statistics frozen from iteration %d", it)
        if not done["observers"] and it >= freeze_observer_iter:
            freeze_detector_qat(model_of(), observers=True)
            done["observers"] = True
            logger.info("QAT: quantization ranges frozen from iteration %d", it)

    return hooks.CallbackHook(before_step=before_step)
