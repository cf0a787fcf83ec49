"""Keyword builders for detectron2 LazyConfig files (model_configs/detection/lazy/*.py), and
the training / evaluation loop that runs such a file (tools/train_net.py --config-file x.py;
the same steps as detectron2's tools/lazyconfig_train_net.py).

Every head builder takes the arch and the feature variant, so a LazyConfig file names the
arch once (``fbnet.arch``) and interpolates it everywhere (``"${fbnet.arch}"``).
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.layers import ShapeSpec
from detectron2.utils import comm

from ..core import VARIANTS, DetectionError, c4_split, mask_rows, resolve_arch, rpn_rows
from .backbone import norm_layer
from .heads import FBNetMaskHead, FBNetRPNHead, _D2BoxHead, build_box_head
from .model import SafeDetectionCheckpointer

def _variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise DetectionError(f"variant: {variant!r} is not one of {list(VARIANTS)}")
    return variant


def _head_norm(norm: str):
    return norm_layer(norm, "norm") or nn.BatchNorm2d


def rpn_head(arch: str, variant: str, in_channels: int, num_anchors: int, repeats: int = -1, norm: str = "BN",
             box_dim: int = 4) -> FBNetRPNHead:
    """The FBNet RPN head (the trunk's last row repeated, or the arch's preset)."""
    darch = resolve_arch(arch)
    trunk, _ = c4_split(darch.spec)
    return FBNetRPNHead(in_channels=in_channels, rows=rpn_rows(darch, _variant(variant), trunk[-1], repeats),
                        num_anchors=num_anchors, box_dim=box_dim, divisor=darch.spec.width_divisor,
                        norm_layer=_head_norm(norm))


def box_head(arch: str, variant: str, in_channels: Optional[int] = None, norm: str = "BN", head_norm: str = "BN",
             pretrained: str = "") -> _D2BoxHead:
    """The RoI box head (``heads.build_box_head``); ``in_channels`` defaults to the C4 trunk's."""
    darch = resolve_arch(arch)
    if in_channels is None:
        in_channels = trunk_channels(arch)
    return build_box_head(darch, _variant(variant), in_channels, norm, head_norm, pretrained)


def box_head_channels(arch: str) -> int:
    """Output channels of the box head (the last stride-32 stage's), for FastRCNNOutputLayers."""
    spec = resolve_arch(arch).spec
    return spec.stage_channels()[f"stage{c4_split(spec)[1][-1]}"]


def trunk_channels(arch: str) -> int:
    """Channels of the C4 trunk's output (``res4``): the RPN / mask heads' input in C4 models."""
    spec = resolve_arch(arch).spec
    return spec.stage_channels()[f"stage{c4_split(spec)[0][-1]}"]


def mask_head(arch: str, variant: str, in_channels: int, num_classes: int, pooler_resolution: int = 14,
              norm: str = "BN", loss_weight: float = 1.0) -> FBNetMaskHead:
    """The FBNet mask head (14x14 RoI features -> 28x28 logits per class)."""
    darch = resolve_arch(arch)
    return FBNetMaskHead(ShapeSpec(channels=in_channels, height=pooler_resolution, width=pooler_resolution),
                         rows=mask_rows(darch, _variant(variant)), num_classes=num_classes,
                         divisor=darch.spec.width_divisor, norm_layer=_head_norm(norm), loss_weight=loss_weight)


# ----------------------------------------------------------------------------- train / test
def do_test(cfg, model):
    """Evaluate on cfg.dataloader.test with cfg.dataloader.evaluator; returns the results."""
    if "evaluator" not in cfg.dataloader:
        return {}
    ret = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    print_csv_format(ret)
    return ret


def do_train(cfg, resume: bool = False):
    """Train as detectron2's lazyconfig_train_net does (SGD/AMP trainer, LR schedule, periodic
    checkpoints, evaluation and writers from cfg.train)."""
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optim)
    checkpointer = SafeDetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter),
                             period=cfg.train.log_period) if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return trainer


def do_eval(cfg):
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    model = create_ddp_model(model)
    SafeDetectionCheckpointer(model, fit="all").load(cfg.train.init_checkpoint)  # evaluated as loaded
    return do_test(cfg, model)
