"""Candidate training: the glue between the search's ``Candidate`` and ``fbnet_zoo.training``.

``train_candidate(candidate, epochs, settings, workdir)`` builds the candidate's FBNet (with the
recipe's classifier dropout and stochastic depth) and trains it with
``fbnet_zoo.training.train_model`` on the configured dataset at the recipe's resolution.

The training layer itself (settings, optimizer, schedule, losses, loop, datasets) moved to
``fbnet_zoo.training``; its names are still reachable here, with a DeprecationWarning.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import nn

from fbnet_zoo.model import FBNet
from fbnet_zoo.training.datasets import cached_datasets
from fbnet_zoo.training.loop import load_teacher, train_model
from fbnet_zoo.training.result import TrainResult
from fbnet_zoo.training.settings import TrainSettings

from .candidate import Candidate

log = logging.getLogger(__name__)


def build_candidate_model(candidate: Candidate, num_classes: int) -> nn.Module:
    """The candidate's FBNet with the recipe's classifier dropout and stochastic depth."""
    r = candidate.recipe
    return FBNet(candidate.arch, num_classes=num_classes, dropout=r.dropout, drop_path_rate=min(r.drop_path, 0.95))


def train_candidate(candidate: Candidate, epochs: int, settings: Union[TrainSettings, Mapping[str, Any], None] = None,
                    workdir: Optional[str] = None, progress: bool = True,
                    on_epoch_end: Optional[Callable[[int, TrainResult], None]] = None) -> TrainResult:
    """Train ``candidate`` (its FBNet with the recipe's dropout and stochastic depth) for
    ``epochs`` epochs on ``settings``' dataset at the recipe's resolution (default: the arch's
    input size). Never raises for bad candidates: returns a failed TrainResult with the reason."""
    key = getattr(candidate, "key", "candidate")
    try:
        settings = TrainSettings.from_dict(settings)
        recipe = candidate.recipe
        resolution = recipe.resolution or candidate.arch.input_size
        train_data, val_data, num_classes = cached_datasets(settings, resolution)
        torch.manual_seed(settings.seed)
        model = build_candidate_model(candidate, num_classes)
        teacher = load_teacher(settings.teacher) if settings.teacher is not None else None
    except Exception as e:  # noqa: BLE001
        log.warning("%s could not start: %s", key, e)
        return TrainResult(key=key, status="failed", error=f"{type(e).__name__}: {e}",
                           epochs_planned=epochs if isinstance(epochs, int) else 0)
    result = train_model(model, recipe, epochs, train_data, val_data, settings, workdir=workdir, key=key,
                         teacher=teacher, progress=progress, num_classes=num_classes, on_epoch_end=on_epoch_end)
    result.extra.setdefault("resolution", resolution)
    return result


# Names that lived here before the training layer moved: name -> its module now.
_MOVED = {
    **dict.fromkeys(["CHECKPOINT_NAME", "Diverged", "evaluate", "_teacher_logits", "_fingerprint"],
                    "fbnet_zoo.training.loop"),
    **dict.fromkeys(["TrainConfigError"], "fbnet_zoo.training.settings"),
    **dict.fromkeys(["RMSpropTF", "param_groups", "build_optimizer"], "fbnet_zoo.training.optim"),
    "lr_at": "fbnet_zoo.training.schedule",
    **dict.fromkeys(["soft_targets", "mixup", "soft_cross_entropy", "distillation_loss"], "fbnet_zoo.training.losses"),
    **dict.fromkeys(["Recipe", "dataclass_kwargs"], "fbnet_zoo.training.recipe"),
    "ModelEma": "fbnet_zoo.training.ema",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(f"fbnet_zoo.search.trainer.{name} moved to {_MOVED[name]}.{name}", DeprecationWarning,
                      stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
