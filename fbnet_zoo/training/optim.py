"""Optimizers of a ``Recipe``: TensorFlow-style RMSProp and Nesterov SGD, weight decay on weights only."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from .recipe import Recipe, RecipeError


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp with TensorFlow's semantics, as used to train EfficientNet/FBNet models:

        ms  = alpha * ms + (1 - alpha) * g^2          (ms starts at 1, not 0)
        mom = momentum * mom + lr * g / sqrt(ms + eps)
        p  -= mom

    ``g`` includes L2 weight decay. Starting ``ms`` at 1 keeps the first steps small, which
    is what makes the paper's learning rates (0.02-0.03) stable.
    """

    def __init__(self, params, lr: float, alpha: float = 0.9, eps: float = 1e-3, momentum: float = 0.9,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, squares, moms = [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("RMSpropTF does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p, memory_format=torch.preserve_format)
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                squares.append(state["square_avg"])
                moms.append(state["momentum_buffer"])
            if not params:
                continue
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            torch._foreach_mul_(squares, group["alpha"])
            torch._foreach_addcmul_(squares, grads, grads, value=1.0 - group["alpha"])
            denom = torch._foreach_add(squares, group["eps"])
            torch._foreach_sqrt_(denom)
            torch._foreach_mul_(moms, group["momentum"])
            torch._foreach_addcdiv_(moms, grads, denom, value=group["lr"])
            torch._foreach_sub_(params, moms)
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """Weight decay on weights of rank >= 2 (conv, linear); none on BN parameters and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer at its peak learning rate (``recipe.effective_lr``: x multiplier for SGD)."""
    groups = param_groups(model, recipe.weight_decay)
    lr = recipe.effective_lr
    if recipe.optimizer == "rmsprop":
        return RMSpropTF(groups, lr=lr, alpha=0.9, eps=1e-3, momentum=recipe.momentum)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=recipe.momentum > 0)
    raise RecipeError(f"recipe.optimizer: {recipe.optimizer!r} is not supported")
