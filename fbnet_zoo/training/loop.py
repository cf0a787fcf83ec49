"""The training loop: ``train_model(model, recipe, epochs, train_data, val_data, settings)``.

It honours every dimension of a ``Recipe`` (optimizer, schedule, EMA, dropout / drop path as
built into the model, mixup, label smoothing, distillation) and returns a ``TrainResult`` with
held-out top-1, training loss and wall time per epoch. It never raises for a diverging or
crashing run: those come back as ``status="failed"`` with the reason.

Recipe semantics:

- optimizer ``rmsprop``: RMSProp as TensorFlow defines it (``optim.RMSpropTF``); ``sgd``:
  Nesterov SGD at ``lr * sgd_lr_multiplier`` (x4 in the paper). Weight decay (L2) applies to
  conv/linear weights, not to BN or biases.
- learning rate: ``schedule.lr_at`` (linear warm-up, then per-epoch exponential decay).
- ``ema``: an exponential moving average of the weights (``ema_decay``, TF-style warm-up of the
  decay); evaluation then uses the averaged model.
- ``mixup``: the Beta(alpha, alpha) parameter; 0 turns it off. ``label_smoothing``: soft targets.
- distillation (``settings.teacher``): ``loss = distill_weight * KD + (1 - distill_weight) * CE``,
  KD being the temperature-scaled KL divergence to the teacher's softened outputs.

Determinism: every epoch reseeds the global RNG and the shuffling generator from (seed, epoch),
so on CPU a run is bit-reproducible and a run resumed from its epoch checkpoint
(``workdir/checkpoint.pt``, written atomically each epoch) continues exactly as the
uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm.auto import tqdm

from fbnet_zoo import build_model
from fbnet_zoo.errors import Diverged  # noqa: F401 - re-exported (its home is fbnet_zoo.errors)
from fbnet_zoo.errors import CheckpointError, UnknownModelError
from fbnet_zoo.io_utils import atomic_write_bytes

from .distributed import DistContext, all_reduce_sum, barrier, convert_sync_batchnorm, shard
from .ema import ModelEma
from .losses import distillation_mix, mixup, soft_cross_entropy, soft_targets
from .optim import build_optimizer
from .recipe import Recipe
from .result import TrainResult
from .schedule import lr_at
from .settings import Hardware, TrainConfigError, TrainSettings, resolve_hardware

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_KEYS = ("top1", "loss", "epoch_seconds", "val_loss", "lr")


# --------------------------------------------------------------------------------------------
# Checkpoints


def _fingerprint(recipe: Recipe, settings: TrainSettings, key: str, model: nn.Module) -> str:
    """What a checkpoint must match to be resumed: the recipe, the data/seed settings and the
    model's parameter shapes."""
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    s = settings.to_dict()
    relevant = {k: s[k] for k in ("dataset", "num_classes", "holdout", "seed", "data_seed", "teacher",
                                  "distill_temperature", "augment", "embedded_train_size",
                                  "embedded_val_size", "max_train_images", "max_val_images")}
    blob = json.dumps({"recipe": recipe.to_dict(), "settings": relevant, "key": key, "shapes": shapes},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 12345) % (2 ** 63)


def _save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_checkpoint(path: str, fingerprint: str, keep: bool = False) -> Optional[Dict[str, Any]]:
    """The run's epoch checkpoint, or None to start from scratch. An unreadable file or another
    run's is logged and ignored (a search candidate starts over), or with ``keep`` (a final run:
    the user's progress) refused with a CheckpointError naming the file, which is left as it is."""
    if not os.path.isfile(path):
        return None
    how = "; it is left as it is. To start this run over, move it away or use another --workdir"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: start over rather than fail the candidate
        if keep:
            raise CheckpointError(f"{path}: cannot resume from it ({type(e).__name__}: {str(e)[:200]}){how}") from None
        log.warning("ignoring unreadable checkpoint %s (%s)", path, e)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        if keep:
            raise CheckpointError(f"{path}: it was written by another run (another arch, recipe, or data / seed "
                                  f"settings); to resume it, rerun with the settings that wrote it{how}")
        log.warning("ignoring checkpoint %s: it belongs to another model/recipe/settings", path)
        return None
    return state


# --------------------------------------------------------------------------------------------
# Teachers


_TEACHER_CACHE: Dict[Any, nn.Module] = {}
_CACHE_LOCK = threading.Lock()


def load_teacher(spec: Union[str, os.PathLike, Mapping[str, Any], nn.Module]) -> nn.Module:
    """A distillation teacher: an nn.Module as is; a zoo name / arch YAML path built with its
    pretrained weights; or ``{arch, weights, num_classes}``."""
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, Mapping):
        arch, weights, nc = spec["arch"], spec.get("weights", True), spec.get("num_classes", 1000)
    else:
        arch, weights, nc = os.fspath(spec), True, 1000
    cache_key = json.dumps([str(arch), str(weights), nc])
    with _CACHE_LOCK:
        if cache_key not in _TEACHER_CACHE:
            _TEACHER_CACHE.clear()
            try:
                _TEACHER_CACHE[cache_key] = build_model(arch, num_classes=nc, pretrained=weights).eval()
            except UnknownModelError as e:  # say whose name it is: the student's is fine
                raise UnknownModelError(f"train.teacher: {e}") from None
        return _TEACHER_CACHE[cache_key]


def _teacher_logits(teacher: nn.Module, x: torch.Tensor, class_index: Optional[torch.Tensor],
                    num_classes: int) -> torch.Tensor:
    with torch.no_grad():
        out = teacher(x)
    if class_index is not None and out.shape[-1] > int(class_index.max()):
        return out.index_select(-1, class_index)
    if out.shape[-1] == num_classes:
        return out
    raise TrainConfigError(f"train.teacher: the teacher predicts {out.shape[-1]} classes, the data has {num_classes}")


def _infer_num_classes(data: Any) -> Optional[int]:
    for obj in (data, getattr(data, "dataset", None)):
        classes = getattr(obj, "classes", None)
        if classes:
            return len(classes)
    return None


# --------------------------------------------------------------------------------------------
# Evaluation


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def evaluate(model: nn.Module, loader, device: torch.device, amp: bool = False,
             memory_format: torch.memory_format = torch.contiguous_format,
             dist: Optional[DistContext] = None) -> Tuple[float, float]:
    """(top-1 %, mean cross-entropy) of ``model`` in eval mode over ``loader``; with ``dist``,
    each process passes its shard and the counts are summed over all processes."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # correct, total, loss sum
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if x.dim() == 4:
                x = x.contiguous(memory_format=memory_format)
            with _autocast(device, amp):
                out = model(x)
            sums[0] += (out.argmax(-1) == y).sum()
            sums[1] += y.shape[0]
            sums[2] += F.cross_entropy(out.float(), y, reduction="sum").double()
    correct, total, loss_sum = all_reduce_sum(sums, dist).tolist()
    if total == 0:
        raise RuntimeError("the validation set is empty")
    return 100.0 * correct / total, loss_sum / total


# --------------------------------------------------------------------------------------------
# The loop


@dataclass
class _Run:
    """Everything one training run holds between epochs."""

    model: nn.Module
    recipe: Recipe
    settings: TrainSettings
    hw: Hardware
    optimizer: torch.optim.Optimizer
    ema: Optional[ModelEma]
    teacher: Optional[nn.Module]
    class_index: Optional[torch.Tensor]
    num_classes: Optional[int]
    result: TrainResult
    fingerprint: str
    ckpt_path: Optional[str]
    hist: Dict[str, List[float]] = field(default_factory=lambda: {k: [] for k in HISTORY_KEYS})
    # data-parallel runs (torchrun): this process's place, and the DDP wrapper steps run through
    dist: Optional[DistContext] = None
    net: Optional[nn.Module] = None
    step_losses: List[float] = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.dist is None or self.dist.is_main

    def publish(self, n: int) -> None:
        h, r = self.hist, self.result
        r.top1, r.loss, r.epoch_seconds = h["top1"][:n], h["loss"][:n], h["epoch_seconds"][:n]
        r.extra.update(val_loss=h["val_loss"][:n], lr=h["lr"][:n])


def _resume(run: _Run, epochs: int, keep: bool = False) -> int:
    """Load the run's epoch checkpoint if it matches; the number of epochs already done.
    ``keep``: refuse a checkpoint that cannot be resumed rather than start over (_load_checkpoint)."""
    state = _load_checkpoint(run.ckpt_path, run.fingerprint, keep) if run.ckpt_path else None
    if state is None:
        return 0
    start = int(state["epoch"])
    run.hist = {k: list(v) for k, v in state["history"].items()}
    if start < epochs:  # (a checkpoint beyond `epochs` already holds the answer)
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        if run.ema is not None:
            run.ema.load_state_dict(state["ema"])
    run.result.extra["resumed_from"] = start
    log.info("%s: resuming after epoch %d", run.result.key, start)
    return start


def train_one_epoch(run: _Run, loader: DataLoader, epoch: int, bar: Any = None) -> Tuple[float, int, float]:
    """One pass over ``loader``: (mean training loss, images seen, last learning rate).

    Data-parallel (``run.dist``): the step runs through the DDP wrapper (gradients averaged over
    processes); each step's loss is all-reduced, so the returned mean, the images seen and
    ``run.step_losses`` (the global mean loss of every step) are those of the global batch, and
    a non-finite loss on any process stops every process at the same step."""
    model, recipe, hw, optimizer = run.model, run.recipe, run.hw, run.optimizer
    net = run.net if run.net is not None else model
    device = hw.device
    steps = len(loader)
    kd_w = recipe.distill_weight if run.teacher is not None else 0.0
    net.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_seen, lr = 0, float("nan")
    for i, (x, y) in enumerate(loader):
        lr = lr_at(recipe, epoch, i, steps)
        for g in optimizer.param_groups:
            g["lr"] = lr
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if x.dim() == 4:
            x = x.contiguous(memory_format=hw.memory_format)
        if run.num_classes is None:
            raise TrainConfigError("num_classes: cannot infer the number of classes from the data; pass it")
        targets = soft_targets(y, run.num_classes, recipe.label_smoothing)
        x, targets, _ = mixup(x, targets, recipe.mixup)
        with _autocast(device, hw.amp):
            out = net(x)
            loss = soft_cross_entropy(out, targets)
            if kd_w > 0:
                t_out = _teacher_logits(run.teacher, x, run.class_index, run.num_classes)
                loss = distillation_mix(out, t_out, loss, kd_w, run.settings.distill_temperature)
        if run.dist is not None:
            # (loss x images, images) summed over processes: the global batch's mean loss
            step = all_reduce_sum(torch.stack([loss.detach().double() * x.shape[0],
                                               torch.tensor(float(x.shape[0]), dtype=torch.float64, device=device)]),
                                  run.dist)
            step_loss = float(step[0] / step[1])
            run.step_losses.append(step_loss)
            if not math.isfinite(step_loss):
                raise Diverged(f"training loss is {step_loss} at epoch {epoch} step {i} (lr {lr:.4g})")
        elif not bool(torch.isfinite(loss)):
            raise Diverged(f"training loss is {float(loss.detach())} at epoch {epoch} step {i} (lr {lr:.4g})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if run.ema is not None:
            run.ema.update(model)
        if run.dist is not None:
            loss_sum += step[0]
            n_seen += int(step[1])
        else:
            loss_sum += loss.detach() * x.shape[0]
            n_seen += x.shape[0]
        if bar is not None:
            bar.update(1)
    return float(loss_sum) / max(n_seen, 1), n_seen, lr


def _setup(model: nn.Module, recipe: Any, epochs: Any, train_data, settings: TrainSettings, workdir: Optional[str],
           teacher: Optional[nn.Module], num_classes: Optional[int], result: TrainResult,
           dist: Optional[DistContext] = None, sync_bn: bool = True) -> _Run:
    """Everything a run needs. ``dist``: train data-parallel (one process of a torchrun job, or a
    one-process "job"): the recipe's ``batch_size`` is then the global batch, split evenly over
    the processes; with ``sync_bn`` (and more than one process) BatchNorm statistics are
    computed over the global batch; the model is wrapped in DistributedDataParallel."""
    if not isinstance(recipe, Recipe):
        recipe = Recipe.from_dict(recipe)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise TrainConfigError(f"epochs: {epochs!r} is not an integer >= 1")
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    hw = resolve_hardware(settings, settings.dataset)
    num_classes = num_classes or _infer_num_classes(train_data)
    if teacher is None and settings.teacher is not None:
        teacher = load_teacher(settings.teacher)
    if dist is not None:
        if recipe.batch_size % dist.world_size:
            raise TrainConfigError(f"recipe.batch_size: {recipe.batch_size} (the global batch) is not divisible by "
                                   f"the {dist.world_size} processes")
        if sync_bn and dist.distributed:
            model = convert_sync_batchnorm(model, hw.device)
    model.to(hw.device, memory_format=hw.memory_format)
    if teacher is not None:
        teacher.to(hw.device, memory_format=hw.memory_format).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    class_index = getattr(train_data, "source_class_indices", None)
    class_index = torch.tensor(class_index, device=hw.device) if class_index is not None else None
    optimizer = build_optimizer(model, recipe)
    ema = ModelEma(model, recipe.ema_decay) if recipe.ema else None
    ckpt_path = os.path.join(workdir, CHECKPOINT_NAME) if (workdir and settings.checkpoint) else None
    net = None
    if dist is not None and dist.distributed:
        net = DistributedDataParallel(model, device_ids=[hw.device.index] if hw.device.type == "cuda" else None)
    return _Run(model, recipe, settings, hw, optimizer, ema, teacher, class_index, num_classes, result,
                _fingerprint(recipe, settings, result.key, model), ckpt_path, dist=dist, net=net)


def train_model(model: nn.Module, recipe: Recipe, epochs: int, train_data, val_data,
                settings: Union[TrainSettings, Mapping[str, Any], None] = None, workdir: Optional[str] = None,
                key: str = "model", teacher: Optional[nn.Module] = None, progress: bool = True,
                num_classes: Optional[int] = None,
                on_epoch_end: Optional[Callable[[int, TrainResult], None]] = None) -> TrainResult:
    """Train any classification ``nn.Module`` for ``epochs`` epochs with ``recipe`` and return
    per-epoch held-out top-1. ``train_data``/``val_data``: datasets of (image tensor, label).

    ``workdir``: checkpoint there after every epoch and resume from it (a checkpoint of the
    same model, recipe and settings that already covers ``epochs`` returns at once).
    ``teacher``: a module for distillation (overrides ``settings.teacher``).
    ``on_epoch_end(epoch, partial_result)``: called after each finished, checkpointed epoch; if
    it has an ``on_resume(epochs_done)`` method, that is called once when the run resumes from
    its checkpoint (to restore model state the checkpoint does not hold, e.g. QATSchedule's
    frozen BN statistics). Divergence or an exception gives ``status="failed"`` with the reason; never raises (but
    KeyboardInterrupt and SystemExit pass through).
    """
    result = TrainResult(key=key, status="ok", epochs_planned=int(epochs) if isinstance(epochs, int) else 0)
    try:
        settings = TrainSettings.from_dict(settings)
        run = _setup(model, recipe, epochs, train_data, settings, workdir, teacher, num_classes, result)
        _train(run, epochs, train_data, val_data, progress, on_epoch_end)
    except Diverged as e:
        result.status, result.error = "failed", f"diverged: {e}"
        log.warning("%s: %s", key, result.error)
    except Exception as e:  # noqa: BLE001 - a failed candidate must not crash the search
        result.status, result.error = "failed", f"{type(e).__name__}: {e}"
        log.warning("%s failed: %s", key, result.error, exc_info=log.isEnabledFor(logging.DEBUG))
    return result


def _train(run: _Run, epochs: int, train_data, val_data, progress: bool, on_epoch_end,
           keep_checkpoint: bool = False) -> None:
    start = _resume(run, epochs, keep_checkpoint)
    if start and hasattr(on_epoch_end, "on_resume"):
        on_epoch_end.on_resume(start)
    run.publish(min(start, epochs))
    if start >= epochs:
        return
    hw, settings, result, ctx = run.hw, run.settings, run.result, run.dist
    bs = run.recipe.batch_size
    pin = hw.device.type == "cuda"
    # Workers are not persistent: each epoch's workers are seeded from ``gen``, reseeded per epoch,
    # so a resumed run draws the same augmentations as an uninterrupted one.
    gen = torch.Generator()
    sampler = None
    if ctx is None:
        loader = DataLoader(train_data, batch_size=bs, shuffle=True, generator=gen, num_workers=hw.num_workers,
                            drop_last=len(train_data) > bs, pin_memory=pin)
    else:
        # One permutation per epoch (seed, epoch), whatever the number of processes; process r
        # takes positions r, r + W, ...: step k of W processes x b images covers the same images
        # as step k of one process x W*b images.
        sampler = DistributedSampler(train_data, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                     seed=settings.seed, drop_last=True)
        loader = DataLoader(train_data, batch_size=bs // ctx.world_size, sampler=sampler, generator=gen,
                            num_workers=hw.num_workers, drop_last=True, pin_memory=pin)
        val_data = Subset(val_data, shard(len(val_data), ctx))
    val_loader = DataLoader(val_data, batch_size=settings.eval_batch_size, shuffle=False,
                            num_workers=hw.num_workers, pin_memory=pin)
    steps = len(loader)
    if steps == 0:
        raise RuntimeError("the training set is empty")
    result.extra["steps_per_epoch"] = steps
    bar = tqdm(total=(epochs - start) * steps, desc=result.key, unit="batch", leave=False,
               disable=not (progress and run.is_main), dynamic_ncols=True)
    rank = ctx.rank if ctx is not None else 0
    images_seen, train_time = 0, 0.0
    try:
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            # each process draws its own augmentations / mixup (rank 0 = the one-process stream)
            torch.manual_seed((_epoch_seed(settings.seed, epoch) + rank * 0x9E3779B97F4A7C15) % (2 ** 63))
            gen.manual_seed(_epoch_seed(settings.seed, epoch) + 1 + rank)
            if sampler is not None:
                sampler.set_epoch(epoch)
            loss, n_seen, lr = train_one_epoch(run, loader, epoch, bar)
            train_seconds = time.perf_counter() - t0
            top1, val_loss = evaluate(run.ema.module if run.ema is not None else run.model, val_loader, hw.device,
                                      hw.amp, hw.memory_format, ctx)
            if not math.isfinite(val_loss):
                raise Diverged(f"validation loss is {val_loss} after epoch {epoch}")
            seconds = time.perf_counter() - t0
            for k, v in zip(HISTORY_KEYS, (top1, loss, seconds, val_loss, lr)):
                run.hist[k].append(v)
            images_seen += n_seen
            train_time += train_seconds
            if run.ckpt_path:
                if run.is_main:  # every process holds the same state; one writes it
                    _save_checkpoint(run.ckpt_path, {
                        "epoch": epoch + 1, "fingerprint": run.fingerprint, "history": run.hist,
                        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                        "ema": run.ema.state_dict() if run.ema is not None else None})
                if ctx is not None:
                    barrier(ctx)
            run.publish(epoch + 1)
            result.extra["train_images_per_second"] = images_seen / max(train_time, 1e-9)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.3f}", top1=f"{top1:.1f}")
            if run.is_main:
                log.info("%s epoch %d/%d: loss %.4f top1 %.2f%% (%.1fs)", result.key, epoch + 1, epochs, loss, top1,
                         seconds)
            if on_epoch_end is not None:
                on_epoch_end(epoch, result)
    finally:
        bar.close()
