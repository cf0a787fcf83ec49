"""Exponential moving average of a model's weights (and floating buffers, e.g. BN statistics)."""

from __future__ import annotations

import copy
from typing import Any, Dict

import torch
from torch import nn


class ModelEma:
    """``ema = d * ema + (1 - d) * weights`` after every optimizer step.

    The decay warms up as in TensorFlow's ``ExponentialMovingAverage(num_updates=...)``:
    ``d = min(decay, (1 + n) / (10 + n))`` after n updates, so short runs (a search's few
    epochs) still get a useful average instead of one stuck near the initial weights.
    Floating buffers (BN running mean/var) are averaged too; integer buffers are copied.
    ``module`` is the averaged copy (always in eval mode, no gradients).
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ema decay: {decay!r} is outside [0, 1]")
        self.decay = float(decay)
        self.warmup = warmup
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._pair(model)

    def _pair(self, model: nn.Module) -> None:
        src = list(model.state_dict(keep_vars=True).values())
        dst = list(self.module.state_dict(keep_vars=True).values())
        if len(src) != len(dst):
            raise ValueError("ema: the model's state does not match the averaged copy")
        self._float_src = [s.detach() for s, d in zip(src, dst) if d.is_floating_point()]
        self._float_dst = [d.detach() for d in dst if d.is_floating_point()]
        self._other = [(s.detach(), d.detach()) for s, d in zip(src, dst) if not d.is_floating_point()]
        self._model_id = id(model)

    def current_decay(self) -> float:
        n = self.updates
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if id(model) != self._model_id:
            self._pair(model)
        self.updates += 1
        weight = 1.0 - self.current_decay()
        if self._float_dst:
            torch._foreach_lerp_(self._float_dst, self._float_src, weight)
        for s, d in self._other:
            d.copy_(s)

    def state_dict(self) -> Dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
