"""``add_fbnet_config(cfg)``: the MODEL.FBNET.* options of the detectron2 adapters."""

from __future__ import annotations

from detectron2.config import CfgNode as CN

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
    return cfg
