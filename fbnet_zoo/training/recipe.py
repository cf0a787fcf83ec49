"""Recipe: the one representation of a training recipe (the "R" of NARS)."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Type, Union

from fbnet_zoo.errors import RecipeError  # noqa: F401 - re-exported (its home is fbnet_zoo.errors)
from fbnet_zoo.errors import check_keys

OPTIMIZERS = ("rmsprop", "sgd")


def dataclass_kwargs(cls, data: Any, where: str, error: Type[Exception]) -> Dict[str, Any]:
    """``data`` as keyword arguments of the dataclass ``cls``: a mapping with only its field names
    (Recipe, TrainSettings); otherwise ``error`` naming ``where`` and the first unknown key
    (``where`` empty: a top-level mapping, the key alone)."""
    return dict(check_keys(where, data, [f.name for f in dataclasses.fields(cls)], error=error))


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters, as searched in the FBNetV3 paper (Table 2) plus schedule.

    lr is the RMSProp-equivalent base lr for a batch of ``batch_size``; with SGD the trainer
    uses ``lr * sgd_lr_multiplier`` (x4 in the paper). ``lr_decay`` is the per-epoch
    exponential decay after ``warmup_epochs`` of linear warm-up. ``resolution`` is the
    training/eval image size (None: the arch's input_size). ``distill_weight`` is the KD
    share of the loss when a teacher is given (0.8 in the paper).
    """

    optimizer: str = "rmsprop"
    lr: float = 0.026
    momentum: float = 0.9
    weight_decay: float = 1e-5
    ema: bool = True
    ema_decay: float = 0.9998
    dropout: float = 0.2
    drop_path: float = 0.1
    mixup: float = 0.0
    label_smoothing: float = 0.1
    warmup_epochs: float = 0.0
    lr_decay: float = 0.963
    epochs: int = 150
    batch_size: int = 128
    resolution: Optional[int] = None
    distill_weight: float = 0.8
    sgd_lr_multiplier: float = 4.0

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def effective_lr(self) -> float:
        return self.lr * (self.sgd_lr_multiplier if self.optimizer == "sgd" else 1.0)

    def replace(self, **changes: Any) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recipe":
        return cls(**dataclass_kwargs(cls, data, "recipe", RecipeError))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path_or_text: Union[str, os.PathLike]) -> "Recipe":
        import yaml
        from iopath.common.file_io import g_pathmgr

        s = os.fspath(path_or_text)
        if "\n" not in s and (s.endswith((".yaml", ".yml")) or os.path.exists(s)):
            try:
                with g_pathmgr.open(s, "r") as f:
                    s = f.read()
            except OSError as e:
                raise RecipeError(f"{path_or_text}: cannot read recipe file ({e})") from None
        data = yaml.safe_load(s)
        return cls.from_dict(data or {})

    def save_yaml(self, path: Union[str, os.PathLike]) -> None:
        from fbnet_zoo.io_utils import atomic_write_text

        atomic_write_text(path, self.to_yaml())


def _num(r: Recipe, name: str, low: float, high: float = math.inf, low_open: bool = False,
         integer: bool = False) -> None:
    v = getattr(r, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise RecipeError(f"recipe.{name}: {v!r} is not a finite number")
    if integer and (not isinstance(v, int)):
        raise RecipeError(f"recipe.{name}: {v!r} is not an integer")
    if (v <= low if low_open else v < low) or v > high:
        raise RecipeError(f"recipe.{name}: {v!r} is outside {'(' if low_open else '['}{low}, {high}]")
    if not integer:
        object.__setattr__(r, name, float(v))


def _validate(r: Recipe) -> None:
    if r.optimizer not in OPTIMIZERS:
        raise RecipeError(f"recipe.optimizer: {r.optimizer!r} is not one of {list(OPTIMIZERS)}")
    _num(r, "lr", 0.0, low_open=True)
    _num(r, "momentum", 0.0, 1.0)
    _num(r, "weight_decay", 0.0)
    if not isinstance(r.ema, bool):
        raise RecipeError(f"recipe.ema: {r.ema!r} is not a boolean")
    _num(r, "ema_decay", 0.0, 1.0)
    _num(r, "dropout", 0.0, 0.99)
    _num(r, "drop_path", 0.0, 0.99)
    _num(r, "mixup", 0.0)
    _num(r, "label_smoothing", 0.0, 0.99)
    _num(r, "warmup_epochs", 0.0)
    _num(r, "lr_decay", 0.0, 1.0, low_open=True)
    _num(r, "epochs", 1, integer=True)
    _num(r, "batch_size", 1, integer=True)
    if r.resolution is not None:
        _num(r, "resolution", 8, integer=True)
    _num(r, "distill_weight", 0.0, 1.0)
    _num(r, "sgd_lr_multiplier", 0.0, low_open=True)
