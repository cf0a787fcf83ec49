"""Whole detectors: the authors' d2go models with their weights, in one call."""

from __future__ import annotations

from typing import Any

from detectron2.modeling import build_model
from torch import nn

from ..convert import load_d2go_weights
from .config import d2go_config


def load_configured_weights(model: nn.Module, cfg, **kwargs: Any):
    """Load MODEL.FBNET.D2GO_WEIGHTS (the authors' d2go checkpoint) into ``model`` when set;
    returns the LoadResult or None. kwargs go to ``load_d2go_weights`` (cache, progress)."""
    source = cfg.MODEL.FBNET.get("D2GO_WEIGHTS", "")
    if not source:
        return None
    return load_d2go_weights(model, source, **kwargs)


def build_d2go_detector(source: str = "FBNetV3-A-d2go:faster_rcnn_c4", device: str = "", **kwargs: Any):
    """(cfg, model): the authors' detector for ``source`` built from their config, with their
    COCO weights loaded (fetched and verified through fbnet_zoo.checkpoints), in eval mode."""
    cfg = d2go_config(source)
    if device:
        cfg.MODEL.DEVICE = device
    model = build_model(cfg)
    load_configured_weights(model, cfg, **kwargs)
    return cfg, model.eval()
