"""``add_fbnet_config(cfg)``: the MODEL.FBNET.* options of the detectron2 adapters;
``d2go_config(source)``: the authors' config for one of their d2go checkpoint sources."""

from __future__ import annotations

import os

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from fbnet_zoo.checkpoints import get_source
from fbnet_zoo.registry import model_configs_dir

from ..convert import split_source
from ..core import DetectionError

NORMS = ("BN", "SyncBN", "FrozenBN", "naiveSyncBN", "GN", "")


def add_fbnet_config(cfg: CN) -> CN:
    """Add MODEL.FBNET (idempotent). Returns ``cfg``.

    ARCH: zoo name (``FBNetV3-E``, ``FBNetV3-A-d2go``) or a YAML arch path.
    NORM: backbone norm (BN | SyncBN | FrozenBN | naiveSyncBN | GN); HEAD_NORM: norm of the
    FBNet RPN / box / mask head blocks. WIDTH_DIVISOR (0 = the arch's), WIDTH_MULTIPLIER
    (compound-scaling width factor). FREEZE_AT: freeze stages 0..FREEZE_AT-1 (0 = none).
    PRETRAINED: "" (none), a checkpoint source name, a path or a URL: ImageNet weights for
    the backbone (and the C4 box head, which is the backbone's stride-32 stage).
    RPN_REPEATS: blocks in the FBNet RPN head (-1 = the arch's/preset's choice).
    D2GO_WEIGHTS: "" or one of the authors' d2go checkpoints (``FBNetV3-A-d2go:faster_rcnn_c4``,
    a path or URL), loaded into the whole detector after it is built (tools/train_net.py;
    ``d2go_config`` sets it with the authors' config).
    """
    if "FBNET" in cfg.MODEL:
        return cfg
    cfg.MODEL.FBNET = CN()
    cfg.MODEL.FBNET.ARCH = "FBNetV3-A"
    cfg.MODEL.FBNET.NORM = "BN"
    cfg.MODEL.FBNET.HEAD_NORM = "BN"
    cfg.MODEL.FBNET.WIDTH_DIVISOR = 0
    cfg.MODEL.FBNET.WIDTH_MULTIPLIER = 1.0
    cfg.MODEL.FBNET.FREEZE_AT = 0
    cfg.MODEL.FBNET.PRETRAINED = ""
    cfg.MODEL.FBNET.OUT_FEATURES = ["res4"]
    cfg.MODEL.FBNET.RPN_REPEATS = -1
    cfg.MODEL.FBNET.D2GO_WEIGHTS = ""
    return cfg


def d2go_config_path(source: str) -> str:
    """The authors' config (model_configs/detection/authors/) recorded with a d2go checkpoint
    source (``"FBNetV3-G-d2go:mask_rcnn_fpn"``): the ``config`` of its ``published`` entry."""
    model, name = split_source(source, "FBNetV3-A-d2go")
    src = get_source(model, name or True)
    configs = [p["config"] for p in src.published if isinstance(p, dict) and p.get("config")]
    if not configs:
        raise DetectionError(f"{model}:{src.name}: the checkpoint source records no config (published[].config)")
    path = os.path.join(model_configs_dir("detection") or "", configs[0])
    if not os.path.isfile(path):
        raise DetectionError(f"{model}:{src.name}: published config {configs[0]!r} is not in model_configs/detection")
    return path


def d2go_config(source: str = "FBNetV3-A-d2go:faster_rcnn_c4") -> CN:
    """A detectron2 config that *is* the authors' model for ``source``, with
    MODEL.FBNET.D2GO_WEIGHTS set to it: build the model and load the weights, nothing to
    override (``fbnet_zoo.detection.d2.build_d2go_detector`` does both)."""
    model, name = split_source(source, "FBNetV3-A-d2go")
    cfg = get_cfg()
    add_fbnet_config(cfg)
    cfg.merge_from_file(d2go_config_path(source))
    cfg.MODEL.FBNET.D2GO_WEIGHTS = f"{model}:{get_source(model, name or True).name}"
    return cfg
