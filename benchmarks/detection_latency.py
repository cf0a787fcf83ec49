#!/usr/bin/env python
"""CPU latency of mobile Faster R-CNN detectors, timed round-robin in one run.

Models (random weights: latency does not depend on them; nothing is downloaded):

* ours: Faster R-CNN FBNetV3-A C4 (model_configs/detection/faster_rcnn_fbnetv3a_C4.yaml),
  eager (the config's RPN test top-k 6000 / 100) and deployed (``fbnet_zoo.detection.d2.deploy``:
  BN folded, the authors' test top-k 1000 / 30, TorchScript with the post-processing; also
  with channels_last weights; and int8 trunk + box head, eager);
* the authors' (d2go-config) variant FBNetV3-A-d2go C4 (model_configs/detection/authors/),
  eager (their config: 1000 / 30) and deployed;
* torchvision's fasterrcnn_mobilenet_v3_large_320_fpn and fasterrcnn_mobilenet_v3_large_fpn
  (weights=None, weights_backbone=None), with their own test settings.

Each model runs at the size it is published for and at a common 320 x 320:
ours / d2go at 224 x 298 (their test size: short side 224, long side <= 320, a 3:4 image),
torchvision's 320 model at 320 x 427 and the other at 800 x 1066 (their transforms resize a
480 x 640 image to that inside the model; ours are fed the resized image, as detectron2's
predictor resizes outside the model). Timing is interleaved: every round times each model
once, in turn, so machine load falls on all models alike; medians over rounds.

    nice -n 10 python benchmarks/detection_latency.py --rounds 15 --threads 1
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
from typing import Any, Callable, Dict, List, Tuple

import torch

warnings.filterwarnings("ignore")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OURS = os.path.join(ROOT, "model_configs", "detection", "faster_rcnn_fbnetv3a_C4.yaml")
AUTHORS = os.path.join(ROOT, "model_configs", "detection", "authors", "faster_rcnn_fbnetv3a_C4.yaml")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def calibrate_bn(model: torch.nn.Module, run: Callable[[], Any]) -> None:
    """Every BatchNorm's running statistics from one train-mode pass (momentum None), so
    random backbones give sane activations and every RPN keeps its full proposal count."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.train()
        m.momentum = None
        m.reset_running_stats()
    with torch.no_grad():
        run()
    for m in bns:
        m.eval()


def d2_model(path: str, test_proposals: int = None):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from fbnet_zoo.detection import d2

    cfg = get_cfg()
    d2.add_fbnet_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.FBNET.NORM", "BN", "MODEL.FBNET.HEAD_NORM", "BN"])
    if test_proposals:
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = test_proposals
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def d2_variants(tag: str, path: str, image: torch.Tensor, calib: torch.Tensor) -> Dict[str, Tuple[Callable, dict]]:
    """eager, deployed (eager Python) and deployed TorchScript (+ channels_last) of one config."""
    from fbnet_zoo.detection.d2.deploy import AUTHORS_C4_TEST_TOPK, deploy_detector, export_torchscript, quantize_detector

    cfg, model = d2_model(path)
    calibrate_bn(model, lambda: model.inference([{"image": calib}], do_postprocess=False))
    eager_props = cfg.MODEL.RPN.POST_NMS_TOPK_TEST
    out = {f"{tag} eager": (lambda: model.inference([{"image": image}], do_postprocess=False),
                            {"params": n_params(model), "proposals": eager_props,
                             "pre_nms_topk": cfg.MODEL.RPN.PRE_NMS_TOPK_TEST})}
    dep = deploy_detector(model, **AUTHORS_C4_TEST_TOPK)
    ts = export_torchscript(dep, calib)
    cl = deploy_detector(model, channels_last=True, **AUTHORS_C4_TEST_TOPK)
    ts_cl = export_torchscript(cl, calib)
    info = {"params": n_params(dep), "proposals": 30, "pre_nms_topk": 1000, "folded_bn": dep.folded_bn}
    out[f"{tag} deploy"] = (lambda: dep.inference([{"image": image}], do_postprocess=False), info)
    out[f"{tag} deploy TorchScript"] = (lambda: ts(image), info)
    out[f"{tag} deploy TorchScript channels_last"] = (lambda: ts_cl(image), info)
    # int8 trunk + box head (fbnet_zoo.quantize's PTQ flow), calibrated on shifted copies of the calibration image
    q = quantize_detector(dep, [calib.roll(k * 16, dims=2) for k in range(4)])
    out[f"{tag} deploy int8 (trunk + box head)"] = (lambda: q.inference([{"image": image}], do_postprocess=False), info)
    return out


def tv_variants(image: torch.Tensor, size: int = 0) -> Dict[str, Tuple[Callable, dict]]:
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn, fasterrcnn_mobilenet_v3_large_fpn

    out = {}
    for name, fn in (("tv mobilenet_v3_large_320_fpn", fasterrcnn_mobilenet_v3_large_320_fpn),
                     ("tv mobilenet_v3_large_fpn", fasterrcnn_mobilenet_v3_large_fpn)):
        kw = {"min_size": size, "max_size": size} if size else {}
        torch.manual_seed(0)
        model = fn(weights=None, weights_backbone=None, **kw).eval()
        calibrate_bn(model.backbone, lambda m=model: m.backbone(m.transform([image])[0].tensors))
        info = {"params": n_params(model), "proposals": model.rpn._post_nms_top_n["testing"],
                "min_size": model.transform.min_size[0], "max_size": model.transform.max_size}
        out[name] = (lambda m=model: m([image]), info)
    return out


def interleaved(models: Dict[str, Tuple[Callable, dict]], rounds: int, warmup: int) -> Dict[str, List[float]]:
    times: Dict[str, List[float]] = {k: [] for k in models}
    with torch.no_grad():
        for _ in range(warmup):
            for fn, _ in models.values():
                fn()
        for _ in range(rounds):
            for name, (fn, _) in models.items():
                t = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t) * 1000)
    return times


def main(argv=None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds (each times every model once)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(HERE, "results", "detection_latency.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    # a smooth random image (not noise), so that proposals and detections are image-like
    photo = torch.nn.functional.interpolate(torch.rand(1, 3, 30, 40, generator=g), size=(480, 640),
                                            mode="bilinear", align_corners=False)[0]
    square = photo[:, :, 80:560][:, 80:400]  # 320 x 320 crop

    def resized(h, w):
        return torch.nn.functional.interpolate(photo[None], size=(h, w), mode="bilinear", align_corners=False)[0]

    settings = {
        "published": {"ours / d2go": resized(224, 298) * 255, "torchvision": photo},
        "320": {"ours / d2go": square * 255, "torchvision": square},
    }
    load_before = os.getloadavg()
    result: Dict[str, Any] = {"setup": {
        "rounds": a.rounds, "warmup": a.warmup, "threads": a.threads, "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "batch": 1,
        "weights": "random (latency-equivalent; nothing downloaded)", "timing": "interleaved round-robin, median",
        "sizes": {"published": "ours/d2go 224x298; tv 320_fpn 320x427, tv fpn 800x1066 (480x640 resized inside)",
                  "320": "every model 320x320"}}}
    for setting, images in settings.items():
        models: Dict[str, Tuple[Callable, dict]] = {}
        img, calib = images["ours / d2go"], images["ours / d2go"]
        models.update(d2_variants("ours FBNetV3-A C4", OURS, img, calib))
        models.update(d2_variants("d2go FBNetV3-A-d2go C4", AUTHORS, img, calib))
        models.update(tv_variants(images["torchvision"], 320 if setting == "320" else 0))
        times = interleaved(models, a.rounds, a.warmup)
        rows = {}
        for name, (_, info) in models.items():
            t = times[name]
            rows[name] = {**info, "median_ms": statistics.median(t), "min_ms": min(t),
                          "iqr_ms": (statistics.quantiles(t, n=4)[2] - statistics.quantiles(t, n=4)[0]) if len(t) > 1 else 0.0}
        ref = rows["tv mobilenet_v3_large_320_fpn"]["median_ms"]
        for r in rows.values():
            r["speed_vs_tv_320_fpn"] = ref / r["median_ms"]
        result[setting] = rows
        print(f"\n[{setting}]  {'model':<44} {'median ms':>9} {'min ms':>8} {'x tv320':>8} {'RoIs':>5} {'params M':>8}")
        for name, r in rows.items():
            print(f"{'':<{len(setting) + 4}}{name:<44} {r['median_ms']:9.1f} {r['min_ms']:8.1f} "
                  f"{r['speed_vs_tv_320_fpn']:8.2f} {r['proposals']:5d} {r['params'] / 1e6:8.2f}")
    best = max(result["320"][k]["speed_vs_tv_320_fpn"] for k in result["320"] if k.startswith("ours") and "deploy" in k)
    result["goal_ours_deployed_at_least_as_fast_as_tv_320_fpn_at_320"] = {"best_ratio": best, "met": best >= 1.0}
    result["setup"]["loadavg_1_5_15"] = {"before": load_before, "after": os.getloadavg()}
    print("\ngoal (ours deployed >= tv 320_fpn at 320, 1 thread):", result["goal_ours_deployed_at_least_as_fast_as_tv_320_fpn_at_320"],
          " load average before/after:", load_before, os.getloadavg())
    from fbnet_zoo.io_utils import atomic_write_text

    atomic_write_text(a.out, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
