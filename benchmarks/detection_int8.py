#!/usr/bin/env python
"""Box AP of the int8 detector vs fp32 on the toy COCO set, evaluated on the same images.

1. Toy COCO (fbnet_zoo.detection.toy_data): a training set and a held-out test set (another seed).
2. Faster R-CNN FBNetV3-A C4 (model_configs/detection/faster_rcnn_fbnetv3a_C4.yaml, or --config
   / --opts, e.g. the FPN config; random init: nothing is downloaded) fine-tuned in fp32 on the training set with detectron2's
   trainer until its box AP is clearly above zero.
3. Deployed (BN folded, the authors' RPN test top-k 1000 / 30), then post-training quantized
   (fbnet_zoo.detection.d2.quantization.quantize_detector: trunk, RPN head, box head int8)
   with a calibration split of training images, resized as at test time.
4. fp32 deploy, int8 (eager; its TorchScript export equals it: tests/test_detection_int8.py)
   and, for each --qat setting, the int8 model after a short QAT fine-tune from the fp32
   weights (fbnet_zoo.detection.d2.quantization: prepare_detector_qat, detectron2's trainer
   with the late-QAT hook, convert_detector_qat), all evaluated with detectron2's
   COCOEvaluator on the held-out images and on the training images (where the small
   fine-tuned model fits better, so int8 - fp32 is measured at a higher AP; the calibration
   images are among them). Each QAT row also records the AP of its fake-quant model (what
   QAT trained; int8 should match it) and of its int8 model converted before any training
   (the QAT graph's observers run over the calibration images in eval mode: QAT's own PTQ).

    nice -n 10 python benchmarks/detection_int8.py            # ~30 min on 2 shared cores
    python benchmarks/detection_int8.py --quick               # a smoke run (AP near 0)
    # QAT settings compared in one run, from a saved fp32 model (trained and saved if absent),
    # each with its fp32 control (the same fine-tune without fake-quant)
    nice -n 10 python benchmarks/detection_int8.py --fp32-weights /tmp/fp32.pth --control \
        --qat iters=40,lr=0.002 --qat iters=200,lr=0.002,freeze_bn=1,freeze_observer=150
    # FREEZE_BN_ITER compared (stored under "freeze_bn_study", the file's other keys kept)
    nice -n 10 python benchmarks/detection_int8.py --fp32-weights /tmp/fp32.pth --section freeze_bn_study \
        --qat iters=100,lr=0.002,freeze_bn=-1,freeze_observer=75 --qat iters=100,lr=0.002,freeze_bn=0,freeze_observer=75
    # the FPN detector (FBNetV3-A trunk): fp32 vs PTQ / QAT int8, and the exported files with the
    # export's RPN pre-NMS cap (deploy.cap_pre_nms_topk_for_export) evaluated against eager
    nice -n 10 python benchmarks/detection_int8.py --config model_configs/detection/faster_rcnn_fbnetv3g_fpn.yaml \
        --opts MODEL.FBNET.ARCH FBNetV3-A --fp32-weights /tmp/fpn.pth --control --section fpn \
        --qat iters=100,lr=0.002,freeze_observer=75
    # PTQ with another bit split (reduce_range) than the backend's default, e.g. PyTorch's
    nice -n 10 python benchmarks/detection_int8.py --fp32-weights /tmp/fp32.pth --qat-iters 0 \
        --bit-split activations --section ptq_bit_split_activations
Writes benchmarks/results/detection_int8.json: a plain run replaces its own keys and keeps the
sections earlier --section runs wrote; --section NAME stores the run under that key, keeping
the rest. Each run records its backend and bit split (which side gives up a bit on fbgemm / x86)
and the SQNR of its PTQ detector's backbone features and RPN head outputs against fp32 on the
held-out images (``output_sqnr``: finer than box AP on 24 toy images).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from typing import Any, Dict, List

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIG = os.path.join(ROOT, "model_configs", "detection", "faster_rcnn_fbnetv3a_C4.yaml")


def is_fpn(cfg) -> bool:
    return "FPN" in cfg.MODEL.BACKBONE.NAME


def build_cfg(train: str, test: str, out: str, iters: int, size: int, batch: int, lr: float,
              config: str = CONFIG, opts=()):
    from detectron2.config import get_cfg

    from fbnet_zoo.detection import d2
    from fbnet_zoo.detection.d2.deploy import AUTHORS_C4_TEST_TOPK
    from fbnet_zoo.detection.d2.quantization import add_quantization_config

    cfg = get_cfg()
    d2.add_fbnet_config(cfg)
    add_quantization_config(cfg)
    cfg.merge_from_file(config)
    # anchors for the toy objects (26-58 px at 128): C4 one map, FPN one size per level p2..p6;
    # RPN test top-k: C4 the authors' 1000 / 30, FPN the config's (1000 per level / 1000). In the
    # config, every model of the run (fp32, deployed, QAT, int8, control) has it from the start
    fpn = is_fpn(cfg)
    anchors = [[16], [32], [64], [128], [256]] if fpn else [[16, 32, 64, 128]]
    if not fpn:
        cfg.merge_from_list(["MODEL.RPN.PRE_NMS_TOPK_TEST", AUTHORS_C4_TEST_TOPK["pre_nms_topk"],
                             "MODEL.RPN.POST_NMS_TOPK_TEST", AUTHORS_C4_TEST_TOPK["test_proposals"]])
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", (train,), "DATASETS.TEST", (test,), "DATALOADER.NUM_WORKERS", 0,
        "MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.ANCHOR_GENERATOR.SIZES", anchors,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 300,
        "INPUT.MIN_SIZE_TRAIN", (size,), "INPUT.MAX_SIZE_TRAIN", size, "INPUT.MIN_SIZE_TEST", size,
        "INPUT.MAX_SIZE_TEST", size, "SOLVER.IMS_PER_BATCH", batch, "SOLVER.BASE_LR", lr,
        "SOLVER.MAX_ITER", iters, "SOLVER.STEPS", (int(iters * 0.8),), "SOLVER.WARMUP_ITERS", min(50, iters // 4),
        "SOLVER.CHECKPOINT_PERIOD", 10 ** 9, "TEST.EVAL_PERIOD", 0, "OUTPUT_DIR", out, "SEED", 0])
    cfg.merge_from_list(list(opts))
    return cfg


def evaluate(cfg, model: torch.nn.Module, dataset: str, out: str) -> Dict[str, float]:
    from detectron2.data import build_detection_test_loader
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset

    evaluator = COCOEvaluator(dataset, tasks=("bbox",), output_dir=out)
    return dict(inference_on_dataset(model.eval(), build_detection_test_loader(cfg, dataset), evaluator)["bbox"])


def output_sqnr(fp32: torch.nn.Module, int8: torch.nn.Module, images: List[torch.Tensor]) -> Dict[str, float]:
    """SQNR (dB) of the int8 detector's backbone features (every level) and RPN head outputs
    (objectness logits, anchor deltas) against the fp32 detector's on ``images``: a finer
    measure of the quantization error than box AP on a few toy images, and independent of
    which RoIs each model keeps."""
    from fbnet_zoo.quantize import _sqnr

    outs: Dict[str, List[List[torch.Tensor]]] = {}
    with torch.no_grad():
        for x in images:
            for i, m in enumerate((fp32, int8)):
                feats = m.backbone(m.preprocess_image([{"image": x}]).tensor)
                rpn = m.proposal_generator
                objectness, deltas = rpn.rpn_head([feats[f] for f in rpn.in_features])
                for key, ts in (("backbone", feats.values()), ("rpn_objectness", objectness), ("rpn_deltas", deltas)):
                    outs.setdefault(key, [[], []])[i].extend(t.flatten() for t in ts)
    return {k: round(_sqnr(torch.cat(f), torch.cat(q)), 2) for k, (f, q) in outs.items()}


def calibration_images(cfg, dataset: str, n: int) -> List[torch.Tensor]:
    """The first ``n`` training images as the test mapper gives them (resized, model format)."""
    from detectron2.data import DatasetCatalog, DatasetMapper

    mapper = DatasetMapper(cfg, is_train=False)
    return [mapper(copy.deepcopy(d))["image"].float() for d in DatasetCatalog.get(dataset)[:n]]


QAT_KEYS = {"iters": int, "lr": float, "freeze_bn": int, "freeze_observer": int, "seed": int}


def qat_setting(text: str) -> Dict[str, Any]:
    """``iters=40,lr=0.002,freeze_bn=0,freeze_observer=-1,seed=0`` -> a dict (missing keys: defaults
    filled in by main; freeze_*: QUANTIZATION.QAT.FREEZE_*_ITER, the iteration from which BN
    statistics / ranges are frozen, d2go's semantics: 0 from the start, -1 never; seed: the
    training data order)."""
    out: Dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in QAT_KEYS:
            raise argparse.ArgumentTypeError(f"--qat {text!r}: {item!r} is not KEY=VALUE with KEY in {list(QAT_KEYS)}")
        try:
            out[key] = QAT_KEYS[key](value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--qat {text!r}: {key}={value!r} is not a {QAT_KEYS[key].__name__}")
    return out


class _FrozenStats:
    """A forward pre-hook that runs a BatchNorm on its running statistics (eval behaviour, no
    update) while the rest of the model trains; its weight and bias still learn. The float
    control's counterpart of freeze_detector_qat(bn=True), which acts on QAT graphs only
    (FrozenBatchNorm would also freeze the weight and bias)."""

    def __call__(self, module: torch.nn.Module, args) -> None:
        module.training = False


def fp32_control(model: torch.nn.Module, cfg, setting: Dict[str, Any]) -> torch.nn.Module:
    """The fp32 ``model`` fine-tuned like a QAT ``setting`` (its iterations, lr, data order, and
    BN statistics frozen from the same iteration), without fake-quant: a copy."""
    from detectron2.engine import DefaultTrainer, hooks
    from detectron2.utils.env import seed_all_rng

    start = copy.deepcopy(model)

    def freeze_bn(trainer):
        if setting["freeze_bn"] >= 0 and trainer.iter == setting["freeze_bn"]:
            for m in start.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.register_forward_pre_hook(_FrozenStats())

    class ControlTrainer(DefaultTrainer):
        @classmethod
        def build_model(cls, c):
            return start

        def build_hooks(self):
            return [hooks.CallbackHook(before_step=freeze_bn)] + super().build_hooks()

    cfg = cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR = cfg.OUTPUT_DIR + "_fp32_control"
    seed_all_rng(setting["seed"])  # the QAT run's data order (detectron2's sampler draws its seed)
    trainer = ControlTrainer(cfg)
    trainer.train()
    out = trainer.model.eval()
    for m in out.modules():  # the hooks go: the model is an ordinary fp32 detector again
        m._forward_pre_hooks.clear()
    return out


def qat_label(s: Dict[str, Any]) -> str:
    return (f"int8 QAT {s['iters']} it lr {s['lr']:g} freeze_bn {s['freeze_bn']} "
            f"freeze_observer {s['freeze_observer']}" + (f" seed {s['seed']}" if s["seed"] else ""))


def exported_ap(cfg, model: torch.nn.Module, image: torch.Tensor, int8: bool, path: str, dataset: str,
                out: str) -> Dict[str, Any]:
    """``model`` exported to ``path``, the file loaded back and evaluated (deploy.ExportedDetector):
    the AP of what ships. The export is checked against eager on ``image``; where that check
    fails (tied scores come out in another order, e.g. a barely trained model) the failure is
    recorded and the file written without the value check (AP does not depend on the order)."""
    from fbnet_zoo.detection.d2.deploy import ExportedDetector, export_torchscript
    from fbnet_zoo.detection.d2.quantization import export_int8_detector
    from fbnet_zoo.errors import DetectionError

    export = export_int8_detector if int8 else export_torchscript
    check = "equal to eager on the traced image"
    try:
        export(model, image, path)
    except DetectionError as e:
        check = f"not equal to eager: {e}"
        export(model, image, path, atol=float("inf"))
    return {**evaluate(cfg, ExportedDetector(torch.jit.load(path)), dataset, out), "export_check": check}


def main(argv=None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=CONFIG, help="detectron2 YAML (default: Faster R-CNN FBNetV3-A C4)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY VALUE",
                   help="config overrides after the toy settings, e.g. MODEL.FBNET.ARCH FBNetV3-A")
    p.add_argument("--iters", type=int, default=500, help="fp32 fine-tuning iterations")
    p.add_argument("--qat-iters", type=int, default=40, help="QAT iterations of a --qat setting without iters= "
                   "(0 and no --qat: no QAT)")
    p.add_argument("--qat", type=qat_setting, action="append", default=None,
                   help="a QAT setting iters=N,lr=X,freeze_bn=I,freeze_observer=J,seed=S (repeatable; default one "
                        "with --qat-iters, lr/10, QUANTIZATION.QAT's default FREEZE_*_ITER, seed 0)")
    p.add_argument("--control", action="store_true",
                   help="for each --qat setting also fine-tune the fp32 model with the same iterations, lr, data "
                        "order and BN freezing, and evaluate it and its PTQ: what the extra training alone gives")
    p.add_argument("--fp32-weights", default="", help="load the fine-tuned fp32 model from this file; train and "
                   "save it there if absent")
    p.add_argument("--no-export", action="store_true",
                   help="FPN: skip evaluating the exported TorchScript files (the RPN pre-NMS top-k cap study)")
    p.add_argument("--train-images", type=int, default=48)
    p.add_argument("--test-images", type=int, default=24)
    p.add_argument("--calibration-images", type=int, default=16)
    p.add_argument("--size", type=int, default=128, help="toy image size (train and test)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bit-split", choices=("activations", "weights", "none"), default=None,
                   help="PTQ's reduce_range (quantize_detector; default: the backend's, e.g. x86: 'weights', 8-bit "
                        "activations with 7-bit weights); PTQ-only runs (--qat-iters 0), e.g. to compare splits")
    p.add_argument("--quick", action="store_true", help="smoke run: 20 iterations, 5 QAT, 8+8 images")
    p.add_argument("--out", default=os.path.join(HERE, "results", "detection_int8.json"))
    p.add_argument("--section", default="", help="store this run under this key of --out, keeping the file's "
                   "other keys (e.g. fpn, freeze_bn_study); default: the run's keys at the top level, replacing "
                   "an earlier plain run's and keeping the --section runs'")
    a = p.parse_args(argv)
    if a.bit_split and (a.qat or a.qat_iters > 0):
        p.error("--bit-split sets PTQ's bit split only (prepare_detector_qat takes the default): use it with "
                "--qat-iters 0 and no --qat")
    if a.quick:
        a.iters, a.qat_iters, a.train_images, a.test_images, a.calibration_images = 20, 5, 8, 8, 4
    torch.set_num_threads(a.threads)

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import DefaultTrainer
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    from fbnet_zoo.detection import d2
    from fbnet_zoo.detection.d2.deploy import cap_pre_nms_topk_for_export, deploy_detector, export_pre_nms_topk
    from fbnet_zoo.detection.d2.quantization import (convert_detector_qat, int8_parts, prepare_detector_qat,
                                                     qat_schedule_hook, quantize_detector)
    from fbnet_zoo.detection.toy_data import make_toy_coco
    from fbnet_zoo.io_utils import atomic_write_text
    from fbnet_zoo.quantize import _bit_split, default_backend

    setup_logger(name="detectron2")  # the trainer's progress (every 20 iterations) and the COCO tables
    work = tempfile.mkdtemp(prefix="fbnet_det_int8_")
    names = {}
    for split, n, seed in (("train", a.train_images, 0), ("test", a.test_images, 1)):
        paths = make_toy_coco(os.path.join(work, split), num_images=n, image_size=(a.size, a.size), seed=seed)
        names[split] = d2.register_coco_dataset(f"fbnet_int8_toy_{split}_{n}_{a.size}", paths["json"],
                                                paths["images"])["instances"]
    cfg = build_cfg(names["train"], names["test"], os.path.join(work, "fp32"), a.iters, a.size, a.batch, a.lr,
                    a.config, a.opts)
    fpn = is_fpn(cfg)
    q_defaults = cfg.QUANTIZATION.QAT
    defaults = {"iters": a.qat_iters, "lr": a.lr / 10, "freeze_bn": q_defaults.FREEZE_BN_ITER,
                "freeze_observer": q_defaults.FREEZE_OBSERVER_ITER, "seed": 0}
    settings = [{**defaults, **s} for s in (a.qat or ([{}] if a.qat_iters > 0 else []))]
    load_before = os.getloadavg()
    t = time.time()
    seed_all_rng(0)
    trainer = DefaultTrainer(cfg)
    if a.fp32_weights and os.path.exists(a.fp32_weights):
        DetectionCheckpointer(trainer.model).load(a.fp32_weights)
        train_s = None  # trained by an earlier run
    else:
        trainer.resume_or_load(resume=False)
        trainer.train()
        train_s = time.time() - t
        if a.fp32_weights:
            folder, name = os.path.split(os.path.abspath(a.fp32_weights))
            DetectionCheckpointer(trainer.model, save_dir=folder).save(os.path.splitext(name)[0])
    model = trainer.model.eval()

    deployed = deploy_detector(model)  # the config's RPN test top-k (build_cfg)
    calib = calibration_images(cfg, names["train"], a.calibration_images)
    t = time.time()
    int8 = quantize_detector(deployed, calib, reduce_range=a.bit_split)
    ptq_s = time.time() - t
    # held-out images, and the training images (a better-fit model: int8 vs fp32 where fp32 AP is high)
    ap = {"fp32 deploy": evaluate(cfg, deployed, names["test"], os.path.join(work, "eval_fp32")),
          "int8 PTQ": evaluate(cfg, int8, names["test"], os.path.join(work, "eval_int8"))}
    ap_train = {"fp32 deploy": evaluate(cfg, deployed, names["train"], os.path.join(work, "eval_fp32_train")),
                "int8 PTQ": evaluate(cfg, int8, names["train"], os.path.join(work, "eval_int8_train"))}
    sqnr = output_sqnr(deployed, int8, calibration_images(cfg, names["test"], a.test_images))
    # FPN exports keep at most `cap` RPN boxes per level before NMS (deploy.cap_pre_nms_topk_for_export):
    # the eager model at that cap and the exported file itself, against the eager model at the config's
    cap = export_pre_nms_topk(deployed)
    export_ap: Dict[str, Dict[str, float]] = {}

    def cap_study(label: str, m: torch.nn.Module, is_int8: bool) -> None:
        if cap is None or a.no_export:
            return
        capped = cap_pre_nms_topk_for_export(copy.deepcopy(m))  # every model of the run has the same RPN
        k = len(export_ap)
        export_ap[f"{label}, eager, pre-NMS top-k {cap}/level"] = evaluate(
            cfg, capped, names["test"], os.path.join(work, f"eval_cap{k}"))
        export_ap[f"{label}, exported TorchScript file (top-k {cap}/level)"] = exported_ap(
            cfg, capped, calib[0], is_int8, os.path.join(work, f"export{k}.ts"), names["test"],
            os.path.join(work, f"eval_ts{k}"))

    cap_study("fp32 deploy", deployed, False)
    cap_study("int8 PTQ", int8, True)
    qat_rows: Dict[str, Dict[str, Any]] = {}

    for k, setting in enumerate(settings):
        label = qat_label(setting)
        qcfg = build_cfg(names["train"], names["test"], os.path.join(work, f"qat{k}"), setting["iters"], a.size,
                         a.batch, setting["lr"], a.config, a.opts)
        # QAT's own PTQ: the prepared graph's observers over the calibration images, eval mode, no training
        untrained = prepare_detector_qat(model, calib[0]).eval()
        with torch.no_grad():
            for x in calib:
                untrained.inference([{"image": x}], do_postprocess=False)
        row_ap = {"int8 converted before training": evaluate(
            cfg, convert_detector_qat(untrained), names["test"], os.path.join(work, f"eval_q0_{k}"))}

        class QATTrainer(DefaultTrainer):
            @classmethod
            def build_model(cls, c):
                return prepare_detector_qat(model, calib[0])  # from the fine-tuned fp32 weights

            def build_hooks(self):
                hooks = super().build_hooks()
                if setting["freeze_bn"] >= 0 or setting["freeze_observer"] >= 0:
                    hooks.insert(-1, qat_schedule_hook(lambda: self.model, setting["freeze_bn"],
                                                       setting["freeze_observer"]))
                return hooks

        t = time.time()
        seed_all_rng(setting["seed"])  # the data order (detectron2's training sampler draws its seed)
        qtrainer = QATTrainer(qcfg)
        qtrainer.train()
        qat_s = time.time() - t
        fake = qtrainer.model.eval()
        qat_int8 = convert_detector_qat(fake)
        row_ap["fake-quant model (what QAT trained)"] = evaluate(cfg, fake, names["test"],
                                                                 os.path.join(work, f"eval_fq_{k}"))
        ap[label] = evaluate(cfg, qat_int8, names["test"], os.path.join(work, f"eval_qat{k}"))
        ap_train[label] = evaluate(cfg, qat_int8, names["train"], os.path.join(work, f"eval_qat_train{k}"))
        cap_study(label, qat_int8, True)
        if a.control:
            control = fp32_control(model, qcfg, setting)
            control_dep = deploy_detector(control)
            control_int8 = quantize_detector(control_dep, calib)
            for name, m in ((f"fp32 control of {label[5:]}", control_dep),
                            (f"int8 PTQ of the fp32 control of {label[5:]}", control_int8)):
                ap[name] = evaluate(cfg, m, names["test"], os.path.join(work, f"eval_c{k}_{len(ap)}"))
                ap_train[name] = evaluate(cfg, m, names["train"], os.path.join(work, f"eval_ct{k}_{len(ap)}"))
        qat_rows[label] = {**setting, "train_seconds": round(qat_s, 1),
                           "box_ap_held_out_diagnostics": {n: {m: round(float(v), 2) for m, v in r.items()
                                                               if m in ("AP", "AP50", "AP75")}
                                                           for n, r in row_ap.items()}}

    def rounded(r: Dict[str, Any]) -> Dict[str, Any]:
        out = {m: round(float(v), 2) for m, v in r.items() if m in ("AP", "AP50", "AP75")}
        return {**out, **({"export_check": r["export_check"]} if "export_check" in r else {})}

    arch = cfg.MODEL.FBNET.ARCH
    backend = default_backend()  # what quantize_detector / prepare_detector_qat use without a backend
    reduced = _bit_split(backend, a.bit_split, "detection_int8")
    result = {
        "benchmark": "detection_int8",
        "model": f"Faster R-CNN {arch} {'FPN' if fpn else 'C4'} ({os.path.relpath(a.config, ROOT)}"
                 + (f", overrides {' '.join(a.opts)}" if a.opts else "") + "), random init",
        "data": {"toy_coco_train_images": a.train_images, "toy_coco_test_images": a.test_images,
                 "image_size": a.size, "calibration_images": a.calibration_images,
                 "calibration": "the first training images, resized as at test time",
                 "test": "held-out toy images (another seed), the same for every model"},
        "training": {"fp32_iters": a.iters, "batch": a.batch, "lr": a.lr,
                     "fp32_train_seconds": None if train_s is None else round(train_s, 1),
                     "fp32_weights": a.fp32_weights or None, "qat": qat_rows},
        "deploy": {"rpn_test_topk": {"pre_nms_topk": deployed.proposal_generator.pre_nms_topk[False],
                                     "test_proposals": deployed.proposal_generator.post_nms_topk[False]},
                   "export_pre_nms_topk_cap": cap, "int8_parts": int8_parts(int8),
                   "ptq_seconds": round(ptq_s, 1), "backend": torch.backends.quantized.engine},
        "bit_split": {"backend": backend, "reduce_range": reduced,
                      "activation_bits": 7 if reduced == "activations" else 8,
                      "weight_bits": 7 if reduced == "weights" else 8},
        "box_ap_held_out": {k: rounded(r) for k, r in ap.items()},
        "box_ap_difference_int8_minus_fp32_held_out": {k: round(float(ap[k]["AP"] - ap["fp32 deploy"]["AP"]), 2)
                                                       for k in ap if k != "fp32 deploy"},
        "box_ap_train_images": {k: rounded(r) for k, r in ap_train.items()},
        "output_sqnr_db_int8_ptq_vs_fp32_held_out": sqnr,
        "box_ap_difference_int8_minus_fp32_train_images": {
            k: round(float(ap_train[k]["AP"] - ap_train["fp32 deploy"]["AP"]), 2) for k in ap_train if k != "fp32 deploy"},
        "threads": a.threads, "torch": torch.__version__, "quick": a.quick,
        "loadavg_1_5_15": {"before": load_before, "after": os.getloadavg()},
    }
    if export_ap:
        result["box_ap_held_out_export_cap"] = {k: rounded(r) for k, r in export_ap.items()}
    print(json.dumps({k: v for k, v in result.items() if k.startswith("box_ap")}, indent=1))
    whole: Dict[str, Any] = {}
    if os.path.exists(a.out):
        with open(a.out, encoding="utf-8") as f:
            whole = json.load(f)
    if a.section:
        whole[a.section] = result
    else:  # a section is a whole run's dict; everything else was an earlier plain run's
        sections = {k: v for k, v in whole.items()
                    if isinstance(v, dict) and v.get("benchmark") == "detection_int8" and k not in result}
        whole = {**result, **sections}
    atomic_write_text(a.out, json.dumps(whole, indent=1) + "\n")
    print(f"wrote {a.out}" + (f" [{a.section}]" if a.section else ""))
    return result


if __name__ == "__main__":
    main()
