"""Exponential moving average of a model's weights (and floating buffers, e.g. BN statistics)."""

from __future__ import annotations

import copy
from typing import Any, Dict

import torch
from torch import nn
from torch.ao.quantization import FakeQuantizeBase, ObserverBase, disable_observer


class ModelEma:
    """``ema = d * ema + (1 - d) * weights`` after every optimizer step.

    The decay warms up as in TensorFlow's ``ExponentialMovingAverage(num_updates=...)``:
    ``d = min(decay, (1 + n) / (10 + n))`` after n updates, so short runs (a search's few
    epochs) still get a useful average instead of one stuck near the initial weights.
    Floating buffers (BN running mean/var) are averaged too; integer buffers are copied, and so
    is the state of quantization-aware training (the fake-quant scales / zero points and their
    observers' ranges): an average of scales paired with a copied zero point is a quantizer
    no step used, and the averaged model's int8 conversion must use the ranges its fake-quant
    forward used (the copy's observers are off: evaluating it does not move them). Tensors are
    paired by state-dict name (a deep-copied FX ``GraphModule``, as ``prepare_qat`` returns,
    registers its buffers in another order than the original).
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
        self.module.apply(disable_observer)  # it never observes: its quantization ranges are the model's
        self._pair(model)

    def _pair(self, model: nn.Module) -> None:
        src = model.state_dict(keep_vars=True)
        dst = self.module.state_dict(keep_vars=True)
        if src.keys() != dst.keys():
            raise ValueError("ema: the model's state does not match the averaged copy")
        src_modules = dict(model.named_modules())
        quant = []  # outermost fake-quant / observer modules (a FakeQuantize holds its observer)
        for name, m in self.module.named_modules():
            if isinstance(m, (FakeQuantizeBase, ObserverBase)) and not any(name.startswith(q + ".") for q in quant):
                quant.append(name)
        # looked up at each update: their buffers change shape in place (per-channel scales
        # start as [1]), which a tensor alias taken now would not follow
        self._quant = []
        for q in quant:
            for owner, m in self.module.get_submodule(q).named_modules(prefix=q):
                self._quant += [(src_modules[owner], m, b) for b in m._buffers if b != "observer_enabled"]
        # by owner type, not by name: a shared fake-quant module has several names in state_dict
        own = [k for k in dst if not isinstance(self.module.get_submodule(k.rpartition(".")[0]),
                                                (FakeQuantizeBase, ObserverBase))]
        averaged = [k for k in own if dst[k].is_floating_point()]
        self._float_src = [src[k].detach() for k in averaged]
        self._float_dst = [dst[k].detach() for k in averaged]
        self._other = [(src[k].detach(), dst[k].detach()) for k in own if not dst[k].is_floating_point()]
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
        for src_owner, dst_owner, name in self._quant:
            s, d = src_owner._buffers[name], dst_owner._buffers[name]
            if d.shape != s.shape:
                d.resize_(s.shape)
            d.copy_(s)

    def state_dict(self) -> Dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
