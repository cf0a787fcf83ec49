"""One-call detector export (tools/export.py --detector): build a detectron2 detector from a
config (or one of the authors' d2go sources), load weights, deploy it (BN folded, the
authors' test top-k for C4 models), and write one TorchScript file with the post-processing,
fp32 or int8 (post-training static quantization calibrated on image files)."""

from __future__ import annotations

import glob
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml
from torch import nn

from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

from fbnet_zoo.checkpoints import describe_key_diff, key_diff, load_checkpoint

from ..core import DetectionError
from .config import add_fbnet_config, d2go_config
from .deploy import AUTHORS_C4_TEST_TOPK, cap_pre_nms_topk_for_export, deploy_detector, export_torchscript
from .model import load_configured_weights
from .quantization import export_int8_detector, int8_parts, quantize_detector

logger = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

__all__ = ["detector_images", "export_detector", "load_detector", "load_detector_weights"]


def load_detector(config: str, weights: str = "", opts: Sequence[str] = ()) -> Tuple[object, nn.Module]:
    """(cfg, eval model): ``config`` a detectron2 YAML with MODEL.FBNET options or one of the
    authors' d2go sources (``FBNetV3-A-d2go:faster_rcnn_c4``: their config and weights);
    ``weights`` a detectron2 checkpoint (MODEL.WEIGHTS); ``opts`` KEY VALUE overrides."""
    if config.endswith((".yaml", ".yml")):
        if not os.path.isfile(config):
            raise DetectionError(f"--detector: config file {config!r} does not exist")
        cfg = get_cfg()
        add_fbnet_config(cfg)
        _merge(lambda: cfg.merge_from_file(config), f"--detector {config}")
    else:
        cfg = d2go_config(config)
    _merge(lambda: cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts]), f"--opts {' '.join(opts)}")
    model = build_model(cfg).eval()
    if weights:
        load_detector_weights(model, weights)
    else:
        load_configured_weights(model, cfg)
    return cfg, model


def _merge(merge, what: str) -> None:
    """yacs reports an unknown key or an odd override list by KeyError / AssertionError: one
    DetectionError naming the file or the overrides instead."""
    try:
        merge()
    except (KeyError, AssertionError, ValueError, TypeError, yaml.YAMLError) as e:
        if isinstance(e, DetectionError):
            raise
        plain = isinstance(e, (KeyError, AssertionError)) and e.args  # KeyError's str() adds quotes
        raise DetectionError(f"{what}: {e.args[0] if plain else ' '.join(str(e).split()) or type(e).__name__}") \
            from None


def load_detector_weights(model: nn.Module, weights: str) -> None:
    """A detectron2 checkpoint (``model_final.pth``: the state dict under ``model``; a path or
    URL) into ``model``, read with ``torch.load(weights_only=True)`` (detectron2's checkpointer
    unpickles ``.pkl`` files) and strictly: a checkpoint of another model is refused naming its
    missing, unexpected and mismatched keys (the checkpointer only logs them, and the export
    would hold random weights)."""
    state, _, where = load_checkpoint(weights)
    problems = describe_key_diff(*key_diff(model.state_dict(), state))
    if problems:
        raise DetectionError(f"--weights {where} does not fit this detector: {problems} (another config or arch?)")
    model.load_state_dict(state, strict=False)


def detector_images(cfg, folder: str, n: int, seed: int = 0) -> List[torch.Tensor]:
    """``n`` image files from below ``folder`` (sorted, shuffled by ``seed``), read in the
    model's INPUT.FORMAT and resized as detectron2's predictor does at test time (shortest
    edge INPUT.MIN_SIZE_TEST, long side <= INPUT.MAX_SIZE_TEST): CHW float tensors."""
    files = sorted(f for f in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                   if f.lower().endswith(IMAGE_EXTS))
    if not files:
        raise DetectionError(f"--calibration {folder}: no image files ({', '.join(IMAGE_EXTS)}) below it")
    order = np.random.default_rng(seed).permutation(len(files))[:n]
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    out = []
    for i in order:
        image = read_image(files[i], format=cfg.INPUT.FORMAT)
        image = resize.get_transform(image).apply_image(image)
        out.append(torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))).float())
    return out


def export_detector(cfg, model: nn.Module, path: str, fmt: str = "torchscript",
                    calibration: Optional[List[torch.Tensor]] = None, backend: Optional[str] = None,
                    authors_topk: bool = True, reduce_range: Optional[str] = None) -> Dict[str, object]:
    """Deploy ``model`` (BN folded; the authors' RPN test top-k 1000 / 30 for C4 models when
    ``authors_topk``; multi-level RPNs keep at most ``deploy.export_pre_nms_topk`` boxes per
    level before NMS, 200 for FPN's 5, where eager and traced NMS agree) and write it to
    ``path``: ``fmt`` "torchscript" (fp32) or "int8" (every FBNet part int8, calibrated on
    ``calibration``; traced on its first image; ``backend`` / ``reduce_range`` as in
    ``fbnet_zoo.quantize.quantize_static``). Returns what
    was written (path, format, int8 parts, traced image size, RPN pre-NMS top-k)."""
    if fmt not in ("torchscript", "int8"):
        raise DetectionError(f"format: {fmt!r} is not one of ['torchscript', 'int8'] for a detector")
    if not calibration:
        raise DetectionError("export_detector: no images (the export is traced and checked on one; int8 "
                             "calibrates on all of them): pass --calibration DIR")
    c4 = "FPN" not in cfg.MODEL.BACKBONE.NAME
    deployed = deploy_detector(model, **(AUTHORS_C4_TEST_TOPK if c4 and authors_topk else {}))
    cap_pre_nms_topk_for_export(deployed)  # FPN: <= 200 per level, so that the file equals eager
    info: Dict[str, object] = {"path": path, "format": fmt, "image_size": tuple(calibration[0].shape[-2:]),
                               "pre_nms_topk": deployed.proposal_generator.pre_nms_topk[False]}
    if fmt == "int8":
        q = quantize_detector(deployed, calibration, backend=backend, reduce_range=reduce_range)
        export_int8_detector(q, calibration[0], path)
        info["int8_parts"] = int8_parts(q)
        info["calibration_images"] = len(calibration)
    else:
        export_torchscript(deployed, calibration[0], path)
    return info
