"""Whole detectors: the authors' d2go models with their weights, in one call."""

from __future__ import annotations

import logging
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from torch import nn

from fbnet_zoo.checkpoints import CheckpointError, describe_key_diff, mismatch_label
from fbnet_zoo.errors import DetectionError, check_choice

from ..convert import load_d2go_weights
from .config import d2go_config

logger = logging.getLogger(__name__)

# What a checkpoint must fit (SafeDetectionCheckpointer's ``fit``): "backbone" for training
# (MODEL.WEIGHTS may come from another data set, with other class counts, or hold the backbone
# alone), "all" where the model is used as loaded (evaluation).
FITS = ("backbone", "all")


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer (MODEL.WEIGHTS, resume), except that:

    - it refuses ``.pkl`` / ``.pyth`` files, which detectron2 reads with ``pickle.load`` (a
      hostile file runs code); ``.pth`` files go through ``torch.load``, weights only. FBNet
      detectors have no such files.
    - a checkpoint that does not fit is refused (DetectionError naming the keys) instead of
      loaded in part with a logged warning. ``fit="backbone"`` (training): every backbone
      tensor must be in the checkpoint with the model's shape, and the checkpoint may hold no
      backbone tensor the model lacks: a checkpoint of another arch would otherwise leave the
      backbone partly random. The heads may differ, as detectron2 allows: fine-tuning to
      another class count, or backbone-only weights; detectron2 logs those keys.
      ``fit="all"`` (evaluation): every key fits, as ``export.load_detector_weights`` asks.
    """

    def __init__(self, model: nn.Module, save_dir: str = "", *, fit: str = "backbone", **kwargs: Any):
        super().__init__(model, save_dir, **kwargs)
        self.fit = check_choice("fit", fit, FITS, error=DetectionError)
        self._loading = ""

    def _load_file(self, filename):
        if filename.endswith((".pkl", ".pyth")):
            raise CheckpointError(
                f"{filename}: refused: detectron2 reads .pkl / .pyth checkpoints with pickle, which can run code; "
                "give a .pth file (torch.save of the state dict, read with weights_only=True)")
        return super()._load_file(filename)

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)  # (detectron2's key handling: prefixes, anchors, pixel mean)
        mismatched = [(k, mismatch_label(k, ckpt, own)) for k, ckpt, own in incompatible.incorrect_shapes]
        # (detectron2 drops a mismatched tensor before loading, so torch lists it as missing too)
        missing = [k for k in incompatible.missing_keys
                   if not k.endswith("num_batches_tracked") and k not in dict(mismatched)]
        unexpected = list(incompatible.unexpected_keys)
        if self.fit == "backbone":
            missing, unexpected = ([k for k in keys if k.startswith("backbone.")] for keys in (missing, unexpected))
            mismatched = [m for m in mismatched if m[0].startswith("backbone.")]
        problems = describe_key_diff(missing, unexpected, [label for _, label in mismatched])
        if problems and self.fit == "all":
            raise DetectionError(f"{self._loading}: does not fit this detector: {problems} (a checkpoint of another "
                                 "config or arch? evaluation needs every tensor of the model)")
        if problems:
            raise DetectionError(f"{self._loading}: does not fit this detector's backbone: {problems} (a checkpoint "
                                 "of another arch or config? the heads may differ for fine-tuning, the backbone may not)")
        return incompatible

    def load(self, path, *args, **kwargs):
        self._loading = path  # named by _load_model's error
        return super().load(path, *args, **kwargs)

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
