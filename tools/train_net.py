#!/usr/bin/env python
"""Train / evaluate detectron2 models with FBNet backbones (detectron2's conventions).

    python tools/train_net.py --config-file model_configs/detection/faster_rcnn_fbnetv3a_C4.yaml \
        --num-gpus 8 MODEL.FBNET.PRETRAINED /path/to/fbnetv3_a_imagenet.pth   # or an arch with a source: B/D/G-timm
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    # the authors' COCO detector: their config, their weights (d2go checkpoint sources)
    python tools/train_net.py --d2go FBNetV3-A-d2go:faster_rcnn_c4 --eval-only
    # LazyConfig (.py) files, overrides as key=value:
    python tools/train_net.py --config-file model_configs/detection/lazy/faster_rcnn_fbnet_C4.py fbnet.arch=FBNetV3-E
    # smoke run on a synthetic COCO-format set (CPU is fine):
    python tools/train_net.py --config-file model_configs/detection/faster_rcnn_fbnetv3a_C4.yaml \
        --toy-coco /tmp/toy SOLVER.MAX_ITER 20 SOLVER.IMS_PER_BATCH 2 INPUT.MIN_SIZE_TRAIN "(128,)"
    # quantization-aware training from trained fp32 weights, then int8: converted, evaluated,
    # exported to OUTPUT_DIR/model_int8.ts (one TorchScript file with the post-processing);
    # BN statistics frozen from the start (QUANTIZATION.QAT.FREEZE_BN_ITER's default 0), ranges
    # here from iteration 4000
    python tools/train_net.py --config-file ... --qat MODEL.WEIGHTS output/model_final.pth \
        SOLVER.BASE_LR 0.001 SOLVER.MAX_ITER 5000 QUANTIZATION.QAT.FREEZE_OBSERVER_ITER 4000

Options: --config-file, --resume, --eval-only, --num-gpus, --num-machines, --machine-rank,
--dist-url and trailing KEY VALUE overrides, as detectron2's own tools/train_net.py;
--toy-coco DIR writes (if absent) and registers the toy set and trains/tests on it.
MODEL.WEIGHTS must fit the detector's backbone when training (the heads may differ: another
class count, or backbone-only weights, which detectron2 logs) and the whole detector with
--eval-only; otherwise the run stops naming the keys (SafeDetectionCheckpointer's ``fit``).
--qat (QUANTIZATION.QAT.ENABLED): the detector's FBNet parts (trunk, RPN head, RoI box / mask /
keypoint heads) are prepared for quantization-aware training after the fp32 weights
(MODEL.WEIGHTS, MODEL.FBNET.D2GO_WEIGHTS) are loaded, trained, converted to int8, evaluated
and exported (fbnet_zoo.detection.d2.quantization; QUANTIZATION.* options documented there).
COCO metrics come from detectron2's COCOEvaluator (pycocotools); semantic configs use
SemSegEvaluator. MODEL.FBNET.PRETRAINED loads the zoo's ImageNet backbone weights.
Needs detectron2 (https://github.com/facebookresearch/detectron2).
"""

from __future__ import annotations

import logging
import os
import sys
import weakref

import torch

try:
    import detectron2.utils.comm as comm
    from detectron2.data import build_detection_test_loader
    from detectron2.config import LazyConfig, get_cfg
    from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
    from detectron2.evaluation import COCOEvaluator, SemSegEvaluator
    from omegaconf import OmegaConf  # (detectron2's LazyConfig dependency)
except ImportError:
    sys.exit("tools/train_net.py needs detectron2, which is not on PyPI: install it from "
             "https://github.com/facebookresearch/detectron2 (see README: Detection)")

from fbnet_zoo.detection import DetectionError, d2  # registers the FBNet backbones and heads
from fbnet_zoo.detection.d2 import lazy
from fbnet_zoo.detection.d2.deploy import cap_pre_nms_topk_for_export
from fbnet_zoo.detection.d2.model import SafeDetectionCheckpointer
from fbnet_zoo.errors import FBNetZooError
from fbnet_zoo.detection.d2.quantization import (add_quantization_config, convert_detector_qat, export_int8_detector,
                                                 int8_parts, prepare_detector_qat, qat_schedule_hook)

TOY_NAME = "fbnet_toy_coco"
logger = logging.getLogger("fbnet_zoo.train_net")


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":
            return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        if not cfg.QUANTIZATION.QAT.ENABLED:
            return model
        # QAT starts from the float weights: load them before the parts become QAT graphs
        if cfg.MODEL.WEIGHTS:
            SafeDetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        d2.load_configured_weights(model, cfg)
        example = torch.zeros(3, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        return prepare_detector_qat(model, example, backend=cfg.QUANTIZATION.BACKEND or None)

    def build_hooks(self):
        # DefaultTrainer made detectron2's checkpointer just before this; MODEL.WEIGHTS and resume go
        # through ours instead (it refuses .pkl files, which detectron2 unpickles)
        self.checkpointer = SafeDetectionCheckpointer(self.checkpointer.model, self.cfg.OUTPUT_DIR,
                                                      trainer=weakref.proxy(self))
        hooks = super().build_hooks()
        q = self.cfg.QUANTIZATION.QAT
        if q.ENABLED and (q.FREEZE_BN_ITER >= 0 or q.FREEZE_OBSERVER_ITER >= 0):
            hooks.insert(-1, qat_schedule_hook(lambda: self.model, q.FREEZE_BN_ITER, q.FREEZE_OBSERVER_ITER))
        return hooks


def register_toy(root: str) -> dict:
    from fbnet_zoo.detection.toy_data import make_toy_coco

    json_path = os.path.join(root, "annotations.json")
    if not os.path.exists(json_path):
        # one writer per machine (the others would find its folder not empty), the others wait for it
        if comm.get_local_rank() == 0:
            make_toy_coco(root)
        comm.synchronize()
    return d2.register_coco_dataset(TOY_NAME, json_path, os.path.join(root, "images"), os.path.join(root, "sem_seg"))


def setup(args):
    if args.d2go:
        cfg = d2.d2go_config(args.d2go)
    else:
        cfg = get_cfg()
        d2.add_fbnet_config(cfg)
        add_quantization_config(cfg)
        cfg.merge_from_file(args.config_file)
    add_quantization_config(cfg)
    if args.qat:
        cfg.QUANTIZATION.QAT.ENABLED = True
    if args.toy_coco:
        names = register_toy(args.toy_coco)
        ds = names["sem_seg"] if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor" else names["instances"]
        cfg.merge_from_list(["DATASETS.TRAIN", (ds,), "DATASETS.TEST", (ds,), "MODEL.ROI_HEADS.NUM_CLASSES", 3,
                             "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 4, "DATALOADER.NUM_WORKERS", 0])
    cfg.merge_from_list(args.opts)
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE != "cpu":
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def setup_lazy(args):
    """A LazyConfig (.py) file: the toy set swapped in when asked, then the key=value overrides."""
    cfg = LazyConfig.load(args.config_file)
    overrides = []
    if args.toy_coco:
        ds = register_toy(args.toy_coco)["instances"]
        overrides = [f"dataloader.train.dataset.names={ds}", f"dataloader.test.dataset.names={ds}",
                     "model.roi_heads.num_classes=3", "dataloader.train.num_workers=0",
                     "dataloader.test.num_workers=0"]
    if not torch.cuda.is_available():
        overrides.append("train.device=cpu")
    cfg = LazyConfig.apply_overrides(cfg, overrides + list(args.opts))
    default_setup(cfg, args)
    return cfg


def configured(setup_fn, args):
    """yacs and LazyConfig report a missing file, an unknown key or an odd override list by
    AssertionError / KeyError: one DetectionError line instead of a traceback."""
    try:
        return setup_fn(args)
    except (AssertionError, KeyError) as e:
        raise DetectionError(f"config: {e.args[0] if e.args else type(e).__name__}") from None


def main(args):
    if args.config_file.endswith(".py"):
        cfg = configured(setup_lazy, args)
        for split in ("test",) if args.eval_only else ("train", "test"):
            names = OmegaConf.select(cfg, f"dataloader.{split}.dataset.names", default=None) or ()
            d2.check_datasets([names] if isinstance(names, str) else names, f"dataloader.{split}.dataset.names")
        if args.eval_only:
            return lazy.do_eval(cfg)
        return lazy.do_train(cfg, resume=args.resume)
    cfg = configured(setup, args)  # registers the toy set too, in every spawned worker
    # a missing COCO folder: one line naming the path, before the model is built (and not after training)
    d2.check_datasets(cfg.DATASETS.TEST, "DATASETS.TEST")
    if not args.eval_only:
        d2.check_datasets(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
    if args.eval_only:
        model = Trainer.build_model(cfg)
        # evaluated as loaded: every tensor must come from the checkpoint (training lets the heads differ)
        SafeDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR, fit="all").resume_or_load(cfg.MODEL.WEIGHTS,
                                                                                              resume=args.resume)
        d2.load_configured_weights(model, cfg)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            from detectron2.evaluation import verify_results

            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    if cfg.QUANTIZATION.QAT.ENABLED:
        return train_qat(cfg, trainer, args.resume)
    trainer.resume_or_load(resume=args.resume)
    if not (args.resume and trainer.checkpointer.has_checkpoint()):
        d2.load_configured_weights(trainer.model, cfg)  # the authors' d2go weights, when the config names them
    return trainer.train()


def train_qat(cfg, trainer, resume: bool):
    """QAT: the float weights are in already (Trainer.build_model); resume only from a QAT
    checkpoint of this run. After training: int8 model converted, evaluated, exported (FPN
    models with the RPN's test pre-NMS top-k capped, deploy.cap_pre_nms_topk_for_export)."""
    if resume and trainer.checkpointer.has_checkpoint():
        trainer.resume_or_load(resume=True)
    results = {"qat": trainer.train()}
    if not (cfg.QUANTIZATION.QAT.EXPORT and comm.is_main_process()):
        return results
    int8 = convert_detector_qat(trainer.model, backend=cfg.QUANTIZATION.BACKEND or None)
    # FPN: the RPN's test pre-NMS top-k where the export equals eager; evaluated as exported
    cap_pre_nms_topk_for_export(int8)
    logger.info("QAT: int8 parts %s", int8_parts(int8))
    if cfg.DATASETS.TEST:
        results["int8"] = Trainer.test(cfg, int8)
        image = next(iter(build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])))[0]["image"].float()
    else:
        image = torch.zeros(3, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    path = os.path.join(cfg.OUTPUT_DIR, "model_int8.ts")
    export_int8_detector(int8, image, path)
    logger.info("QAT: int8 detector exported to %s", path)
    results["int8_export"] = path
    return results


def build_parser():
    parser = default_argument_parser()
    parser.add_argument("--toy-coco", default="", metavar="DIR",
                        help="write (if absent) and register a synthetic COCO set in DIR and use it")
    parser.add_argument("--d2go", default="", metavar="SOURCE",
                        help="one of the authors' d2go checkpoints (e.g. FBNetV3-A-d2go:faster_rcnn_c4): "
                             "their config is used (no --config-file needed) and their weights loaded")
    parser.add_argument("--qat", action="store_true",
                        help="quantization-aware training (QUANTIZATION.QAT.ENABLED): from the loaded fp32 weights, "
                             "then int8 converted, evaluated and exported to OUTPUT_DIR/model_int8.ts")
    return parser


if __name__ == "__main__":
    args = build_parser().parse_args()
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except FBNetZooError as e:  # bad config, source, weights or data: one line (other failures keep their traceback)
        sys.exit(f"error: {e}")
