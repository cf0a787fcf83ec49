"""The learning-rate schedule of a ``Recipe``: linear warm-up, then per-epoch exponential decay.

The schedule does not depend on the number of epochs trained, so a run stopped after e epochs
(the search's early stop) is exactly the first e epochs of a longer one."""

from __future__ import annotations

import math

from .recipe import Recipe


def lr_at(recipe: Recipe, epoch: int, step: int = 0, steps: int = 1) -> float:
    """Learning rate for ``step`` of ``steps`` in ``epoch`` (0-based), SGD multiplier included:
    linear warm-up over ``warmup_epochs`` (reaching the peak as warm-up ends), then ``lr_decay``
    applied once per epoch after warm-up."""
    base = recipe.effective_lr
    w = recipe.warmup_epochs
    t = epoch + step / steps
    if w > 0 and t < w:
        return base * min(1.0, (t + 1.0 / steps) / w)
    return base * recipe.lr_decay ** math.floor(t - w + 1e-9)
