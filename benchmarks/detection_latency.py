#!/usr/bin/env python
"""CPU latency of mobile Faster R-CNN detectors, timed round-robin in one run.

Models (random weights: latency does not depend on them; nothing is downloaded):

* ours: Faster R-CNN FBNetV3-A C4 (model_configs/detection/faster_rcnn_fbnetv3a_C4.yaml),
  eager (the config's RPN test top-k 6000 / 100) and deployed (``fbnet_zoo.detection.d2.deploy``:
  BN folded, the authors' test top-k 1000 / 30, TorchScript with the post-processing; also
  with channels_last weights; and the whole detector int8 -- trunk, RPN head, RoI box head
  (``fbnet_zoo.detection.d2.quantization``) -- eager and as one frozen TorchScript file, and
  that file with the trunk's stem and first stage left fp32);
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

Per part (trunk, RPN head, box head on the 30 RoIs; for the FPN: the FPN backbone, the RPN head
on every level, the box head on every RoI), fp32 (frozen TorchScript, channels_last) and int8
(frozen TorchScript) are also timed alone on the inputs the float detector gives them: where
int8 gains and loses, and for the FPN the like-for-like int8 ratio (same inputs and RoIs). The result records the machine (CPU model, AVX2 /
AVX-512 / VNNI flags, quantized engine): int8 speed depends on VNNI.

    python benchmarks/detection_latency.py --rounds 15 --threads 1      # not under nice: timings
    python benchmarks/detection_latency.py --quick      # 320 x 320 only, ours (C4, FPN) + torchvision, no d2go variant

Our FBNetV3-G FPN detector (model_configs/detection/faster_rcnn_fbnetv3g_fpn.yaml) runs its deploy
path: BN folded, RPN test top-k as exported (200 per level before NMS, 1000 after), fp32
TorchScript (+ channels_last) and int8 TorchScript, at its published test size (short side 800:
800 x 1066) and at 320 x 320. Random weights: the FPN's RPN NMS is off for timing (see
fpn_variants) so that fp32 and int8 run the box head on the same RoIs; the d2 rows record the
RoIs they measured. The machine's load average (before, after, and at each size's start) and
the process's nice value are recorded with the numbers.
Writes benchmarks/results/detection_latency.json (--quick: detection_latency_quick.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from latency import cpu_facts, machine_facts  # benchmarks/latency.py: what every CPU result records

warnings.filterwarnings("ignore")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OURS = os.path.join(ROOT, "model_configs", "detection", "faster_rcnn_fbnetv3a_C4.yaml")
AUTHORS = os.path.join(ROOT, "model_configs", "detection", "authors", "faster_rcnn_fbnetv3a_C4.yaml")
FPN = os.path.join(ROOT, "model_configs", "detection", "faster_rcnn_fbnetv3g_fpn.yaml")


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


def median_ms(fn: Callable, x, rounds: int) -> float:
    with torch.no_grad():
        fn(x)
        fn(x)
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def part_times(deployed, quantized, image: torch.Tensor, rounds: int) -> Dict[str, Dict[str, float]]:
    """Each int8 part alone vs its fp32 part (frozen TorchScript both; fp32 channels_last), on
    the inputs the *float* detector gives it for ``image`` -- every call: an FPN's RPN head runs
    once per level -- so fp32 and int8 get the same inputs, the same RoIs included (where the
    whole int8 detector with random weights may keep fewer; see fpn_variants)."""
    from fbnet_zoo.detection.d2.quantization import part_inputs, part_slots, wrap_parts

    fp32 = copy.deepcopy(deployed)
    slots = wrap_parts(fp32)
    inputs = part_inputs(fp32, slots, [image])
    out = {}
    for part, (parent, attr) in part_slots(quantized).items():
        xs = inputs[part]
        xs_cl = [x.contiguous(memory_format=torch.channels_last) for x in xs]
        cl = copy.deepcopy(getattr(*slots[part])).to(memory_format=torch.channels_last)
        with torch.no_grad():  # traced on the first input; the graphs take any size
            f = torch.jit.freeze(torch.jit.trace(cl, xs_cl[0], strict=False).eval())
            q = torch.jit.freeze(torch.jit.trace(getattr(parent, attr), xs[0], strict=False).eval())
        f_ms = median_ms(lambda batch: [f(x) for x in batch], xs_cl, rounds)
        q_ms = median_ms(lambda batch: [q(x) for x in batch], xs, rounds)
        shapes = [list(x.shape) for x in xs]
        out[part] = {"input": shapes[0] if len(shapes) == 1 else shapes, "fp32_ms": f_ms, "int8_ms": q_ms,
                     "int8_speedup": f_ms / q_ms}
    return out


def measured_rois(model: torch.nn.Module, image: torch.Tensor) -> int:
    """How many RoIs the box head of a detectron2 detector gets on ``image`` (what its time
    depends on: random weights, and int8 more than fp32, can leave fewer proposals than the
    RPN's top-k)."""
    seen = {}
    hook = model.roi_heads.box_pooler.register_forward_hook(lambda mod, args, out: seen.update(n=out.shape[0]))
    try:
        with torch.no_grad():
            model.inference([{"image": image}], do_postprocess=False)
    finally:
        hook.remove()
    return int(seen.get("n", 0))


def int8_file(dep, calib: torch.Tensor, **kwargs):
    """The whole detector int8 (every FBNet part; ``kwargs`` to quantize_detector), calibrated on
    shifted copies of the calibration image, and its frozen TorchScript file (traced on it)."""
    from fbnet_zoo.detection.d2.quantization import export_int8_detector, quantize_detector

    q = quantize_detector(dep, [calib.roll(k * 16, dims=2) for k in range(4)], **kwargs)
    return q, export_int8_detector(q, calib)


def d2_variants(tag: str, path: str, image: torch.Tensor, calib: torch.Tensor,
                parts: Optional[Dict[str, Any]] = None, part_rounds: int = 0) -> Dict[str, Tuple[Callable, dict]]:
    """eager, deployed (eager Python) and deployed TorchScript (+ channels_last) of one config,
    and the whole int8 detector (eager and frozen TorchScript); per-part times into ``parts``."""
    from fbnet_zoo.detection.d2.deploy import AUTHORS_C4_TEST_TOPK, deploy_detector, export_torchscript
    from fbnet_zoo.detection.d2.quantization import int8_parts

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
    info = {"params": n_params(dep), "proposals": 30, "pre_nms_topk": 1000, "folded_bn": dep.folded_bn,
            "rois_measured": measured_rois(dep, image)}
    out[f"{tag} deploy"] = (lambda: dep.inference([{"image": image}], do_postprocess=False), info)
    out[f"{tag} deploy TorchScript"] = (lambda: ts(image), info)
    out[f"{tag} deploy TorchScript channels_last"] = (lambda: ts_cl(image), info)
    q, ts_q = int8_file(dep, calib)
    qinfo = {**info, "int8_parts": int8_parts(q), "rois_measured": measured_rois(q, image)}
    out[f"{tag} deploy int8"] = (lambda: q.inference([{"image": image}], do_postprocess=False), qinfo)
    out[f"{tag} deploy int8 TorchScript"] = (lambda: ts_q(image), qinfo)
    # the same with the stem and the first (stride-2, 16-channel) stage float
    _, ts_q2 = int8_file(dep, calib, float_stages=2)
    out[f"{tag} deploy int8 TorchScript (stages 0-1 fp32)"] = (lambda: ts_q2(image), {**qinfo, "float_stages": 2})
    if parts is not None:
        parts[tag] = part_times(dep, q, image, part_rounds)
    return out


def fpn_variants(tag: str, path: str, image: torch.Tensor, calib: torch.Tensor,
                 parts: Optional[Dict[str, Any]] = None, part_rounds: int = 0) -> Dict[str, Tuple[Callable, dict]]:
    """The FPN detector's deploy path: BN folded, the config's RPN test top-k (1000 per level /
    1000) capped for the export at ``deploy.export_pre_nms_topk`` per level (200 for 5 levels:
    what ``tools/export.py --detector`` writes), fp32 TorchScript (+ channels_last) and the
    whole detector int8 -- FPN backbone graph, RPN head, box head -- as one frozen file; per-part
    times into ``parts`` (the like-for-like int8 ratio: the same RoIs for both)."""
    from fbnet_zoo.detection.d2.deploy import cap_pre_nms_topk_for_export, deploy_detector, export_torchscript
    from fbnet_zoo.detection.d2.quantization import int8_parts

    cfg, model = d2_model(path)
    calibrate_bn(model, lambda: model.inference([{"image": calib}], do_postprocess=False))
    # random weights: the int8 RPN's coarse deltas collapse under NMS (FBNetV3-G at 320: 48
    # proposals int8, 597 fp32), so its box head would run on far fewer RoIs than fp32's. RPN NMS
    # off (IoU threshold 1: NMS runs, suppresses nothing): both get every pre-NMS box, up to 1000
    model.proposal_generator.nms_thresh = 1.0
    dep = cap_pre_nms_topk_for_export(deploy_detector(model))
    cl = cap_pre_nms_topk_for_export(deploy_detector(model, channels_last=True))
    rpn = dep.proposal_generator
    info = {"params": n_params(dep), "proposals": rpn.post_nms_topk[False], "pre_nms_topk": rpn.pre_nms_topk[False],
            "folded_bn": dep.folded_bn, "image": list(image.shape[-2:])}
    info["rpn_nms_thresh"] = 1.0
    info["rois_measured"] = measured_rois(dep, image)
    ts = export_torchscript(dep, calib)
    ts_cl = export_torchscript(cl, calib)
    q, ts_q = int8_file(dep, calib)
    qinfo = {**info, "int8_parts": int8_parts(q), "rois_measured": measured_rois(q, image)}
    if parts is not None:
        parts[tag] = part_times(dep, q, image, part_rounds)
    return {f"{tag} deploy TorchScript": (lambda: ts(image), info),
            f"{tag} deploy TorchScript channels_last": (lambda: ts_cl(image), info),
            f"{tag} deploy int8 TorchScript": (lambda: ts_q(image), qinfo)}


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
    p.add_argument("--settings", default="published,320", help="comma-separated: published, 320")
    p.add_argument("--no-d2go", action="store_true", help="leave out the authors' d2go-config variant")
    p.add_argument("--no-fpn", action="store_true", help="leave out our FBNetV3-G FPN detector")
    p.add_argument("--quick", action="store_true",
                   help="unattended short run: 320 x 320 only, our C4 and FPN + torchvision (no d2go variant; --no-fpn "
                        "drops the FPN), at most 9 rounds")
    p.add_argument("--out", default=None, help="default: results/detection_latency.json (--quick: _quick.json)")
    a = p.parse_args(argv)
    if a.quick:
        a.settings, a.no_d2go, a.rounds = "320", True, min(a.rounds, 9)
    a.out = a.out or os.path.join(HERE, "results", "detection_latency_quick.json" if a.quick else
                                  "detection_latency.json")
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    # a smooth random image (not noise), so that proposals and detections are image-like
    photo = torch.nn.functional.interpolate(torch.rand(1, 3, 30, 40, generator=g), size=(480, 640),
                                            mode="bilinear", align_corners=False)[0]
    square = photo[:, 80:400, 80:400]  # 320 x 320 crop

    def resized(h, w):
        return torch.nn.functional.interpolate(photo[None], size=(h, w), mode="bilinear", align_corners=False)[0]

    settings = {  # FPN: its config's test size, short side 800 (long side <= 1333) on the 3:4 image
        "published": {"ours / d2go": resized(224, 298) * 255, "fpn": resized(800, 1066) * 255, "torchvision": photo},
        "320": {"ours / d2go": square * 255, "fpn": square * 255, "torchvision": square},
    }
    settings = {k: settings[k] for k in a.settings.split(",")}
    load_before = os.getloadavg()
    result: Dict[str, Any] = {"setup": {
        "rounds": a.rounds, "warmup": a.warmup, "threads": a.threads, "quick": a.quick, **machine_facts(a.threads), **cpu_facts(), "batch": 1,
        "weights": "random (latency-equivalent; nothing downloaded)", "timing": "interleaved round-robin, median",
        "sizes": {"published": "ours/d2go C4 224x298; ours FPN 800x1066; tv 320_fpn 320x427, tv fpn 800x1066 "
                               "(480x640 resized inside)",
                  "320": "every model 320x320"}}}
    result["setup"]["nice"] = os.nice(0)  # a niced run times under other jobs' priority
    for setting, images in settings.items():
        result["setup"][f"loadavg_at_{setting}_start"] = os.getloadavg()
        models: Dict[str, Tuple[Callable, dict]] = {}
        img, calib = images["ours / d2go"], images["ours / d2go"]
        parts: Dict[str, Any] = {}
        models.update(d2_variants("ours FBNetV3-A C4", OURS, img, calib, parts, a.rounds))
        if not a.no_d2go:
            models.update(d2_variants("d2go FBNetV3-A-d2go C4", AUTHORS, img, calib))
        if not a.no_fpn:
            models.update(fpn_variants("ours FBNetV3-G FPN", FPN, images["fpn"], images["fpn"], parts, a.rounds))
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
        def int8_vs_fp32(tag: str) -> float:
            int8 = min(rows[k]["median_ms"] for k in rows if k.startswith(tag) and "int8 TorchScript" in k)
            fp32 = min(rows[k]["median_ms"] for k in rows if k.startswith(tag) and "TorchScript" in k and "int8" not in k)
            return fp32 / int8

        fp32_over_int8 = int8_vs_fp32("ours FBNetV3-A C4")
        result[setting] = rows
        result[f"{setting} int8 vs fp32"] = {
            "definition": "best fp32 deploy TorchScript median / best int8 TorchScript median (> 1: int8 faster)",
            "ratio": fp32_over_int8, "per_part_ours": parts["ours FBNetV3-A C4"]}
        if not a.no_fpn:
            fpn_parts = parts["ours FBNetV3-G FPN"]
            result[f"{setting} int8 vs fp32"].update({
                "ratio_ours_fpn": int8_vs_fp32("ours FBNetV3-G FPN"),
                "ratio_ours_fpn_note": "whole files; not like-for-like with random weights: the int8 RPN keeps "
                                       "fewer RoIs (rois_measured)",
                "per_part_ours_fpn": fpn_parts,
                # the int8-able parts on the float detector's inputs: the like-for-like FPN ratio
                "ratio_ours_fpn_parts_same_inputs": sum(v["fp32_ms"] for v in fpn_parts.values())
                / sum(v["int8_ms"] for v in fpn_parts.values())})
        print(f"\n[{setting}]  {'model':<54} {'median ms':>9} {'min ms':>8} {'x tv320':>8} {'RoIs':>5} {'params M':>8}")
        for name, r in rows.items():
            print(f"{'':<{len(setting) + 4}}{name:<54} {r['median_ms']:9.1f} {r['min_ms']:8.1f} "
                  f"{r['speed_vs_tv_320_fpn']:8.2f} {r.get('rois_measured', r['proposals']):5d} {r['params'] / 1e6:8.2f}")
        print(f"  int8 vs best fp32 TorchScript: C4 {fp32_over_int8:.2f}x"
              + (f", FPN {result[f'{setting} int8 vs fp32']['ratio_ours_fpn']:.2f}x (its parts on the same "
                 f"inputs: {result[f'{setting} int8 vs fp32']['ratio_ours_fpn_parts_same_inputs']:.2f}x)"
                 if not a.no_fpn else "")
              + ";  C4 per part (fp32 ms / int8 ms): " + ", ".join(
            f"{k} {v['fp32_ms']:.1f}/{v['int8_ms']:.1f}" for k, v in parts["ours FBNetV3-A C4"].items()))
    if "320" in result:
        best = max(result["320"][k]["speed_vs_tv_320_fpn"] for k in result["320"] if k.startswith("ours") and "deploy" in k)
        result["goal_ours_deployed_at_least_as_fast_as_tv_320_fpn_at_320"] = {"best_ratio": best, "met": best >= 1.0}
    result["setup"]["loadavg_1_5_15"] = {"before": load_before, "after": os.getloadavg()}
    result["setup"]["quantized_engine"] = torch.backends.quantized.engine
    print("\ngoal (ours deployed >= tv 320_fpn at 320, 1 thread):", result.get("goal_ours_deployed_at_least_as_fast_as_tv_320_fpn_at_320"),
          " load average before/after:", load_before, os.getloadavg())
    from fbnet_zoo.io_utils import atomic_write_text

    atomic_write_text(a.out, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
