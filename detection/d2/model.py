"""Whole detectors: the authors' d2go models with their weights, in one call."""

from __future__ import annotations

from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from torch import nn

from fbnet_zoo.checkpoints import CheckpointError

from ..convert import load_d2go_weights
from .config import d2go_config


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer (MODEL.WEIGHTS, resume), except that it refuses ``.pkl`` /
    ``.pyth`` files, which detectron2 reads with ``pickle.load`` (a hostile file runs code);
    ``.pth`` files go through ``torch.load``, weights only. FBNet detectors have no such files."""

    def _load_file(self, filename):
        if filename.endswith((".pkl", ".pyth")):
            raise CheckpointError(
                f"{filename}: refused: detectron2 reads .pkl / .pyth checkpoints with pickle, which can run code; "
                "give a .pth file (torch.save of the state dict, read with weights_only=True)")
        return super()._load_file(filename)

    def _torch_load(self, f):  # explicit: torch < 2.6 defaults to weights_only=False
        return torch.load(f, map_location="cpu", weights_only=True)


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
