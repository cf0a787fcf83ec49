#!/usr/bin/env python
"""CPU inference latency, parameters and fvcore FLOPs of Faster R-CNN detectors, in one run.

detectron2 (if installed): Faster R-CNN C4 with FBNetV3-A and FBNetV3-E (our configs) vs
detectron2's R-50-C4 (its model-zoo config), all at the same input size and the same RPN
proposal count. torchvision: our C4 models vs fasterrcnn_mobilenet_v3_large_fpn and
fasterrcnn_resnet50_fpn, same size and proposal count. Random weights (latency does not
depend on them; nothing is downloaded). Goal: FBNetV3-A C4 >= 3x faster than R-50-C4.

    nice -n 10 python benchmarks/detection_latency.py --size 320 --proposals 100 --runs 5
Writes benchmarks/results/detection_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from typing import Any, Callable, Dict

import torch

warnings.filterwarnings("ignore")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def timed(fn: Callable[[], Any], runs: int, warmup: int) -> Dict[str, float]:
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": runs}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def calibrate_bn(backbone: torch.nn.Module, x: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of ``x`` (one train-mode pass,
    momentum 1), so randomly initialised backbones give sane activations and every RPN keeps
    its full proposal count (an uncalibrated random ResNet overflows and its RPN drops
    non-finite boxes, which would make it look faster than it is)."""
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 1.0
    backbone.train()
    with torch.no_grad():
        backbone(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    backbone.eval()


def d2_models(size: int, proposals: int) -> Dict[str, Any]:
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from fbnet_zoo.detection import d2

    common = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", size, "INPUT.MAX_SIZE_TEST", size,
              "MODEL.RPN.POST_NMS_TOPK_TEST", proposals, "MODEL.RPN.PRE_NMS_TOPK_TEST", 6000,
              "MODEL.ROI_HEADS.NUM_CLASSES", 80]
    out = {}
    for name, path in (("FBNetV3-A C4", os.path.join(ROOT, "model_configs/detection/faster_rcnn_fbnetv3a_C4.yaml")),
                       ("FBNetV3-E C4", os.path.join(ROOT, "model_configs/detection/faster_rcnn_fbnetv3e_C4.yaml")),
                       ("R-50-C4", model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml"))):
        cfg = get_cfg()
        d2.add_fbnet_config(cfg)
        cfg.merge_from_file(path)
        cfg.merge_from_list(common)
        if name == "R-50-C4":
            cfg.MODEL.RESNETS.NORM = "BN"  # eval-mode BN = FrozenBN's arithmetic; lets calibrate_bn work
        model = build_model(cfg).eval()
        out[name] = model
    return out


def d2_entry(model, image: torch.Tensor, runs: int, warmup: int) -> Dict[str, Any]:
    from detectron2.utils.analysis import FlopCountAnalysis

    fmt = model.input_format if hasattr(model, "input_format") else "BGR"
    img = image if fmt == "RGB" else image.flip(0)
    inputs = [{"image": img * 255.0, "height": img.shape[1], "width": img.shape[2]}]
    entry: Dict[str, Any] = {"params": n_params(model)}
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        calibrate_bn(model.backbone, images.tensor)
        proposals, _ = model.proposal_generator(images, model.backbone(images.tensor), None)
    entry["proposals"] = len(proposals[0])
    entry.update(timed(lambda: model(inputs), runs, warmup))
    try:
        with torch.no_grad():
            fca = FlopCountAnalysis(model, inputs)
            fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            entry["fvcore_flops"] = int(fca.total())
    except Exception as e:  # noqa: BLE001 - a benchmark reports what it could not measure
        entry["fvcore_flops_error"] = f"{type(e).__name__}: {e}"[:200]
    return entry


def tv_models(size: int, proposals: int) -> Dict[str, Any]:
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn

    from fbnet_zoo.detection.tv import fasterrcnn_fbnet

    kw = dict(min_size=size, max_size=size, rpn_pre_nms_top_n_test=6000, rpn_post_nms_top_n_test=proposals)
    return {
        "FBNetV3-A C4": fasterrcnn_fbnet("FBNetV3-A", "c4", num_classes=91, **kw).eval(),
        "FBNetV3-E C4": fasterrcnn_fbnet("FBNetV3-E", "c4", num_classes=91, **kw).eval(),
        "mobilenet_v3_large_fpn": fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, **kw).eval(),
        "resnet50_fpn": fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, **kw).eval(),
    }


def tv_entry(model, image: torch.Tensor, runs: int, warmup: int) -> Dict[str, Any]:
    from fvcore.nn import FlopCountAnalysis

    entry: Dict[str, Any] = {"params": n_params(model)}
    with torch.no_grad():
        images, _ = model.transform([image])
        calibrate_bn(model.backbone, images.tensors)
        proposals, _ = model.rpn(images, model.backbone(images.tensors))
    entry["proposals"] = len(proposals[0])
    entry.update(timed(lambda: model([image]), runs, warmup))
    try:
        with torch.no_grad():
            fca = FlopCountAnalysis(model, ([image],))
            fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            entry["fvcore_flops"] = int(fca.total())
    except Exception as e:  # noqa: BLE001
        entry["fvcore_flops_error"] = f"{type(e).__name__}: {e}"[:200]
    return entry


def main(argv=None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=320, help="square input side (min = max size)")
    p.add_argument("--proposals", type=int, default=100, help="RPN proposals kept at test time, all models")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(HERE, "results", "detection_latency.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    image = torch.rand(3, a.size, a.size)
    result: Dict[str, Any] = {
        "setup": {"size": a.size, "proposals": a.proposals, "runs": a.runs, "warmup": a.warmup,
                  "threads": a.threads, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                  "weights": "random (latency-equivalent; nothing downloaded)", "batch": 1},
    }
    rows = []
    try:
        import detectron2  # noqa: F401

        have_d2 = True
    except ImportError:
        have_d2 = False
        result["detectron2"] = "not installed"
    if have_d2:
        result["detectron2"] = {}
        for name, model in d2_models(a.size, a.proposals).items():
            result["detectron2"][name] = e = d2_entry(model, image, a.runs, a.warmup)
            rows.append(("detectron2", name, e))
            del model
        d = result["detectron2"]
        base = d["R-50-C4"]["median_ms"]
        result["detectron2_speedup_vs_R50_C4"] = {k: base / v["median_ms"] for k, v in d.items()}
        result["goal_fbnetv3a_c4_3x_faster_than_r50_c4"] = result["detectron2_speedup_vs_R50_C4"]["FBNetV3-A C4"] >= 3.0
    result["torchvision"] = {}
    for name, model in tv_models(a.size, a.proposals).items():
        result["torchvision"][name] = e = tv_entry(model, image, a.runs, a.warmup)
        rows.append(("torchvision", name, e))
    t = result["torchvision"]
    result["torchvision_speedup_vs_resnet50_fpn"] = {k: t["resnet50_fpn"]["median_ms"] / v["median_ms"]
                                                     for k, v in t.items()}
    print(f"{'framework':<12} {'model':<24} {'median ms':>10} {'params M':>9} {'GFLOPs':>8} {'RoIs':>5}")
    for fw, name, e in rows:
        fl = f"{e['fvcore_flops'] / 1e9:8.2f}" if "fvcore_flops" in e else "     n/a"
        print(f"{fw:<12} {name:<24} {e['median_ms']:10.1f} {e['params'] / 1e6:9.2f} {fl} {e['proposals']:5d}")
    if have_d2:
        print("speed-up vs R-50-C4:", {k: round(v, 2) for k, v in result["detectron2_speedup_vs_R50_C4"].items()})
    print("speed-up vs resnet50_fpn:", {k: round(v, 2) for k, v in result["torchvision_speedup_vs_resnet50_fpn"].items()})
    from fbnet_zoo.io_utils import atomic_write_text

    atomic_write_text(a.out, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
