"""Quantization-aware training of a trained classifier, distilled from its own fp32 outputs.

    >>> out = distill_qat(model, recipe.replace(distill_weight=1.0), epochs, train_data, val_data,
    ...                   settings, calibration=calibration_batches)
    >>> out.int8                                  # the converted int8 model (fbnet_zoo.quantize)

The goal of this QAT is not accuracy on the labels but agreement with the fp32 model it starts
from: the loss is the knowledge-distillation loss (``recipe.distill_weight``, 1.0: KD only) to
the fp32 model's own logits at ``settings.distill_temperature``. Training on labels instead
moves the model away from fp32 (benchmarks/int8_latency.py: 91.7% top-1 agreement after three
epochs, against 98.2% for plain PTQ).

It is the pieces that exist, in order: ``prepare_qat`` (fake-quant with the int8 model's
arithmetic and bit split), ``calibrate_qat`` (PTQ's activation ranges, from ``calibration``
batches), the project's trainer (``loop._setup``
/ ``loop._train``: recipe, EMA, channels_last, checkpoint / resume in ``workdir``) with the
fp32 model as the teacher and ``QATSchedule`` freezing BN statistics and ranges, and
``convert_qat`` of the trained model (its EMA copy when the recipe has EMA).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from fbnet_zoo import build_model, load_spec
from fbnet_zoo.errors import check_int
from fbnet_zoo.io_utils import atomic_write_text
from fbnet_zoo.quantize import (QATSchedule, calibrate_qat, convert_qat, export_int8_torchscript, freeze_qat_bn_stats,
                                freeze_qat_observers, prepare_qat, top1_agreement)
from fbnet_zoo.spec import ArchSpec

from .datasets import build_datasets
from .loop import _setup, _train
from .recipe import Recipe
from .result import TrainResult
from .settings import TrainConfigError, TrainSettings

log = logging.getLogger(__name__)

__all__ = ["DISTILL_QAT_RECIPE", "DistilledQAT", "INT8_NAME", "QAT_RESULT_NAME", "distill_qat", "qat_final"]


# A fine-tune, not a training: KD only, a small constant-ish learning rate, no regularisation (the
# teacher is the model itself), a short EMA; measured on the int8_latency benchmark's model (README "int8")
DISTILL_QAT_RECIPE = Recipe(optimizer="sgd", lr=0.0005, batch_size=64, weight_decay=0.0, ema=True, ema_decay=0.99,
                            dropout=0.0, drop_path=0.0, mixup=0.0, label_smoothing=0.0, warmup_epochs=0,
                            lr_decay=0.7, epochs=3, distill_weight=1.0)


@dataclass
class DistilledQAT:
    """What ``distill_qat`` returns: the int8 model, the fake-quant model it was converted from
    (the EMA copy when the recipe has EMA; eval mode) and the trainer's result."""

    int8: nn.Module
    qat: nn.Module
    result: TrainResult


def _check_epoch(name: str, value: Optional[int]) -> None:
    if value is not None:
        check_int(f"distill_qat: {name}", value, 0, error=TrainConfigError)


def distill_qat(model: nn.Module, recipe: Union[Recipe, Mapping[str, Any]], epochs: int, train_data, val_data,
                settings: Union[TrainSettings, Mapping[str, Any], None] = None, *,
                calibration: Optional[Iterable[Any]] = None, ranges: str = "histogram",
                teacher: Optional[nn.Module] = None,
                backend: Optional[str] = None, reduce_range: Union[None, bool, str] = None,
                keep_float: Sequence[str] = (), example: Optional[torch.Tensor] = None,
                freeze_bn: Optional[int] = 0, freeze_observers: Optional[int] = None,
                workdir: Optional[str] = None, key: str = "qat", progress: bool = True,
                num_classes: Optional[int] = None) -> DistilledQAT:
    """QAT of the trained fp32 ``model`` (left untouched) with the KD loss to its own logits.

    recipe / settings: the trainer's (``train_model``); ``recipe.distill_weight`` is the KD
      share of the loss (1.0: KD only, the self-distillation this function is for),
      ``settings.distill_temperature`` its temperature. ``settings.teacher`` must be unset.
      ``recipe.dropout`` replaces the model's dropout rate in the QAT model (the model's own,
      e.g. a classifier's 0.2, made the distilled model drift from its teacher).
    calibration / ranges: batches (images or (images, labels)) that set the activation ranges
      before training, as PTQ does (``calibrate_qat``: "histogram", "mse" or "minmax"). None:
      the first training steps do (moving-average min / max).
    teacher: another fp32 module to distil from (default: ``model`` itself, frozen).
    backend / reduce_range / keep_float / example: as in ``prepare_qat`` (the bit split
      defaults to the backend's: on x86 8-bit activations, 7-bit weights).
    freeze_bn / freeze_observers: the epoch after which BN statistics / quantization ranges stop
      updating (``QATSchedule``); 0: from the start (the fp32 statistics, the calibrated ranges);
      None: never. Freezing the ranges from the start needs ``calibration``.
    workdir: the trainer's epoch checkpoint (a rerun resumes from it).
    Raises ``TrainConfigError`` / ``QuantizationError`` for bad arguments and the trainer's
    errors (e.g. ``Diverged``) for a failed run.
    """
    settings = TrainSettings.from_dict(settings)
    if not isinstance(recipe, Recipe):
        recipe = Recipe.from_dict(recipe)
    if settings.teacher is not None:
        raise TrainConfigError(f"distill_qat: train.teacher: {settings.teacher!r}: the teacher is the fp32 model "
                               "itself (or the teacher argument, a module); leave train.teacher unset")
    if recipe.distill_weight <= 0:
        raise TrainConfigError(f"distill_qat: recipe.distill_weight: {recipe.distill_weight!r}: distilled QAT needs "
                               "a KD share in (0, 1] (1.0: KD only)")
    check_int("distill_qat: epochs", epochs, 1, error=TrainConfigError)
    _check_epoch("freeze_bn", freeze_bn)
    _check_epoch("freeze_observers", freeze_observers)
    if freeze_observers == 0 and calibration is None:
        raise TrainConfigError("distill_qat: freeze_observers=0 freezes the ranges before any image was seen; "
                               "pass calibration batches or a later epoch")
    teacher = copy.deepcopy(model if teacher is None else teacher).eval()
    qat = prepare_qat(model, backend=backend, example=example, keep_float=keep_float, reduce_range=reduce_range)
    for module in qat.modules():  # the recipe's dropout, not the model's: the teacher runs without any
        if isinstance(module, nn.Dropout):
            module.p = recipe.dropout
    if calibration is not None:
        n = calibrate_qat(qat, calibration, ranges)
        log.info("distill_qat: activation ranges (%s) calibrated on %d images", ranges, n)
    if freeze_bn == 0:
        freeze_qat_bn_stats(qat)
    if freeze_observers == 0:
        freeze_qat_observers(qat)
    qat.train()
    schedule = QATSchedule(qat, freeze_bn=freeze_bn or None, freeze_observers=freeze_observers or None)
    result = TrainResult(key=key, status="ok", epochs_planned=epochs)
    run = _setup(qat, recipe, epochs, train_data, settings, workdir, teacher, num_classes, result)
    t0 = time.perf_counter()
    _train(run, epochs, train_data, val_data, progress, schedule)
    result.extra["wall_seconds"] = time.perf_counter() - t0
    trained = (run.ema.module if run.ema is not None else run.model).eval()
    trained = trained.to("cpu", memory_format=torch.contiguous_format)  # int8 kernels run on the CPU
    return DistilledQAT(convert_qat(trained), trained, result)


INT8_NAME = "model_int8.ts"
QAT_RESULT_NAME = "qat_result.json"


def qat_final(arch: Union[str, os.PathLike, ArchSpec, Mapping[str, Any]], weights: str, recipe: Recipe,
              settings: TrainSettings, workdir: str, epochs: int, output: Optional[str] = None,
              calibration_images: int = 256, backend: Optional[str] = None,
              reduce_range: Union[None, bool, str] = None, progress: bool = True) -> Tuple[DistilledQAT, str, float]:
    """``tools/train.py --qat``: ``distill_qat`` of ``arch`` with the trained fp32 ``weights``
    (anything ``build_model(..., pretrained=)`` reads) on ``settings``' data at the recipe's
    resolution, on the CPU (QAT on CUDA is untested here), calibrated on the first
    ``calibration_images`` training images (without augmentation), BN statistics and ranges frozen from the start; the int8 model saved as TorchScript at ``output``
    (default ``workdir/model_int8.ts``) and the run's summary at ``workdir/qat_result.json``.
    Returns (the distilled QAT, the TorchScript path, top-1 agreement of int8 with fp32 on the
    validation set)."""
    check_int("calibration_images", calibration_images, 1, error=TrainConfigError)
    spec = load_spec(arch)
    resolution = recipe.resolution or spec.input_size
    train_data, val_data, num_classes = build_datasets(settings, resolution)
    model = build_model(spec, num_classes=num_classes, pretrained=weights, dropout=recipe.dropout,
                        drop_path_rate=0.0).eval()
    os.makedirs(workdir, exist_ok=True)
    # PTQ's calibration set: training images as the model sees them at test time (no random
    # crops or flips: an ImageNet RandomResizedCrop would calibrate the ranges on zoomed-in images)
    plain = build_datasets(settings.replace(augment=False), resolution)[0] if settings.augment else train_data
    head = Subset(plain, range(min(calibration_images, len(plain))))
    calibration = DataLoader(head, batch_size=32, shuffle=False)
    out = distill_qat(model, recipe, epochs, train_data, val_data, settings.replace(device="cpu"),
                      calibration=calibration, backend=backend, reduce_range=reduce_range,
                      example=torch.zeros(1, spec.in_channels, resolution, resolution), freeze_bn=0,
                      freeze_observers=0, workdir=workdir, key=f"{spec.name}-qat", progress=progress,
                      num_classes=num_classes)
    path = output or os.path.join(workdir, INT8_NAME)
    example = torch.randn(1, spec.in_channels, resolution, resolution, generator=torch.Generator().manual_seed(0))
    export_int8_torchscript(out.int8, path, example=example)
    agreement, n = top1_agreement(model, out.int8, DataLoader(val_data, batch_size=settings.eval_batch_size))
    summary = {"arch": spec.name, "weights": str(weights), "epochs": epochs, "recipe": recipe.to_dict(),
               "distill_temperature": settings.distill_temperature, "qat_top1": list(out.result.top1),
               "int8": path, "top1_agreement_int8_vs_fp32": agreement, "validation_images": n}
    atomic_write_text(os.path.join(workdir, QAT_RESULT_NAME), json.dumps(summary, indent=1) + "\n")
    log.info("%s: int8 agrees with fp32 on %.2f%% of %d validation images -> %s", spec.name, 100 * agreement, n,
             path)
    return out, path, agreement
