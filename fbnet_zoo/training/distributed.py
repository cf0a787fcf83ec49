"""Data-parallel training across processes (``torchrun``): process group, SyncBN, reductions.

``init_distributed(device)`` reads what ``torchrun`` puts in the environment (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and joins the process group: NCCL
when the run is on CUDA (each process on ``cuda:LOCAL_RANK``), gloo on CPU. Without those
variables it returns a one-process context and initialises nothing, so the same code path
trains on one device.

SyncBN: on CUDA, torch's ``nn.SyncBatchNorm``. torch's SyncBatchNorm refuses CPU tensors, so on
CPU (gloo) the BatchNorms become ``GlobalBatchNorm2d``, which computes the batch statistics over
all processes with one differentiable all-reduce per layer, so a 2 x b run normalises as a
1 x 2b run does (up to float rounding).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn

from .settings import TrainConfigError, resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the run: ``rank`` of ``world_size`` processes, ``local_rank``
    on its node, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None:
        return default
    try:
        return int(v)
    except ValueError:
        raise TrainConfigError(f"environment {name}: {v!r} is not an integer (set by torchrun)") from None


def process_device(device: str, world: int, local_rank: int) -> torch.device:
    """The device this process trains on. A CUDA device without an index (``"cuda"``, or
    ``"auto"`` under torchrun) becomes ``cuda:LOCAL_RANK``: torch.cuda.set_device needs an index,
    and each torchrun process owns its local GPU. An explicit index is kept as given."""
    chosen = resolve_device(device)
    if chosen.type == "cuda" and (chosen.index is None or (world > 1 and device == "auto")):
        return torch.device("cuda", local_rank)
    return chosen


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Join the process group torchrun describes (a no-op for a plain ``python`` run).

    device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``; under torchrun
    on CUDA every process takes ``cuda:LOCAL_RANK`` (an explicit index is kept as given)."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    chosen = process_device(device, world, local)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world <= 1:
        return DistContext(0, 1, 0, chosen, None)
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), local, chosen, backend)
    log.info("rank %d of %d (local rank %d) on %s, backend %s", ctx.rank, ctx.world_size, local, chosen, backend)
    return ctx


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, ctx: Optional[DistContext]) -> torch.Tensor:
    """``t`` summed over all processes (in place; ``t`` itself when not distributed)."""
    if ctx is not None and ctx.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def shard(n: int, ctx: DistContext) -> Sequence[int]:
    """This process's indices of ``n`` items for evaluation: every item exactly once over all
    processes (no padding, unlike DistributedSampler, so metrics count each image once)."""
    return range(ctx.rank, n, ctx.world_size)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics cover the whole global batch (all processes),
    for backends torch's SyncBatchNorm does not run on (CPU / gloo). Eval mode, or a single
    process, is plain BatchNorm2d. Gradients flow through the all-reduce
    (torch's functional collectives, whose all-reduce is differentiable), as in SyncBatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        # one all-reduce per layer: each process's (n, n * mean, n * E[x^2]) from its own (stable)
        # mean / variance, summed in float64 so that E[x^2] - mean^2 does not cancel
        var_l, mean_l = torch.var_mean(xf, dim=(0, 2, 3), unbiased=False)
        mean_l, var_l = mean_l.double(), var_l.double()
        n = torch.full((1,), x.numel() / c, dtype=torch.float64, device=x.device)
        s = funcol.all_reduce(torch.cat([mean_l * n, (var_l + mean_l * mean_l) * n, n]), "sum", dist.group.WORLD)
        count = s[-1]
        mean64 = s[:c] / count
        var64 = torch.clamp(s[c:2 * c] / count - mean64 * mean64, min=0.0)
        mean, var = mean64.float(), var64.float()
        centred = xf - mean.view(1, c, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * float(count / torch.clamp(count - 1, min=1))
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y.to(x.dtype)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if type(module) is nn.BatchNorm2d:
        out = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        out.load_state_dict(module.state_dict())
        out.train(module.training)
        out.to(next(iter(module.state_dict().values())).device)
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm synchronised across processes: torch's SyncBatchNorm on
    CUDA, ``GlobalBatchNorm2d`` elsewhere. State-dict keys are unchanged (a checkpoint of the
    converted model loads into the plain one)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)
