"""Candidate training: one trainer that honours every dimension of a ``Recipe``.

``train_candidate(candidate, epochs, settings, workdir)`` builds the candidate's FBNet and trains
it on the configured dataset; ``train_model(model, recipe, ...)`` trains any ``nn.Module`` the same
way (the CIFAR-10 scripts train EfficientNet baselines through it). Both return a
``TrainResult`` with held-out top-1, training loss and wall time per epoch, and never raise for a
diverging or crashing run: those come back as ``status="failed"`` with the reason.

Recipe semantics:

- optimizer ``rmsprop``: RMSProp as TensorFlow defines it (mean square initialised to 1, eps
  inside the square root; decay 0.9, eps 1e-3), the optimizer of the EfficientNet/FBNet
  family; ``sgd``: Nesterov SGD at ``lr * sgd_lr_multiplier`` (x4 in the paper). Both use
  ``momentum``. Weight decay (L2) applies to conv/linear weights, not to BN or biases.
- learning rate at fractional epoch t: ``lr * t / warmup_epochs`` during warm-up, then
  ``lr * lr_decay ** floor(t - warmup_epochs)`` (per-epoch exponential decay). The schedule
  does not depend on the number of epochs trained, so a run stopped after e epochs (the
  search's early stop) is exactly the first e epochs of a longer one.
- ``ema``: an exponential moving average of the weights (``ema_decay``, TF-style warm-up of the
  decay); evaluation then uses the averaged model.
- ``dropout`` / ``drop_path``: built into the FBNet (classifier dropout, stochastic depth rising
  linearly over the blocks); both act only in training mode.
- ``mixup``: the Beta(alpha, alpha) parameter; 0 turns it off. ``label_smoothing``: soft targets.
- distillation (``settings.teacher``): ``loss = distill_weight * KD + (1 - distill_weight) * CE``,
  KD being the temperature-scaled KL divergence to the teacher's softened outputs.
- ``batch_size`` and ``resolution`` shape the data pipeline (resolution None: the arch's input size).

Determinism: the model is initialised from ``settings.seed``; every epoch reseeds the global RNG
and the shuffling generator from (seed, epoch), so on CPU a run is bit-reproducible and a run
resumed from its epoch checkpoint (``workdir/checkpoint.pt``, written atomically each epoch)
continues exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from fbnet_zoo.errors import Diverged, TrainConfigError  # noqa: F401 - re-exported (their home is fbnet_zoo.errors)

from .candidate import Candidate, TrainResult
from .ema import ModelEma
from .recipe import Recipe, dataclass_kwargs

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


# --------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class TrainSettings:
    """Where and how candidates train (the search config's ``train:`` section).

    dataset: "embedded" (default, generated in memory), "cifar10" (``data_dir`` holds
      ``cifar-10-batches-py``) or "imagefolder" (``data_dir`` holds ``train/`` [and ``val/``]).
    num_classes: ImageFolder only: keep this many random classes (the paper: 200 of ImageNet).
    holdout: carve the validation set from the training images (a count, or a fraction in
      (0, 1)) instead of using the dataset's own validation/test split (the paper held out 10K).
    data_seed: seeds the dataset itself (class choice, hold-out split, embedded generation);
      ``seed`` seeds model initialisation, shuffling, augmentation and mixup.
    teacher: distillation teacher: a zoo name or arch YAML path (loaded with its pretrained
      weights), or a mapping ``{arch: ..., weights: path|URL|source (default: the default
      source), num_classes: 1000}``; None trains without distillation.
    threads: torch CPU threads for this process while training (default 1: search candidates are
      small and train fastest single-threaded, and two threads on a busy 2-core machine were
      measured 10-30x slower; parallelism comes from running candidates side by side, e.g. on
      Ray, whose tasks use ``num_cpus_per_candidate`` threads). None leaves torch's setting alone.
    max_train_images / max_val_images: use a seeded random subset (quick runs).
    embedded_train_size / embedded_val_size: size of the generated embedded splits.
    amp: bfloat16 autocast on CUDA devices.
    channels_last: train in NHWC memory format (about 1.4x faster for small FBNets on CPU).
    """

    dataset: str = "embedded"
    data_dir: Optional[str] = None
    num_classes: Optional[int] = None
    holdout: Union[int, float, None] = None
    num_workers: int = 0
    device: str = "cpu"
    seed: int = 0
    data_seed: int = 0
    teacher: Union[None, str, Mapping[str, Any]] = None
    distill_temperature: float = 1.0
    eval_batch_size: int = 256
    threads: Optional[int] = 1
    augment: bool = True
    embedded_train_size: int = 2500
    embedded_val_size: int = 1000
    max_train_images: Optional[int] = None
    max_val_images: Optional[int] = None
    download: bool = False
    checkpoint: bool = True
    amp: bool = False
    channels_last: bool = True

    def __post_init__(self) -> None:
        _validate_settings(self)

    def replace(self, **changes: Any) -> "TrainSettings":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        if isinstance(self.teacher, Mapping):
            d["teacher"] = dict(self.teacher)
        return d

    @classmethod
    def from_dict(cls, data: Union[Mapping[str, Any], "TrainSettings", None]) -> "TrainSettings":
        if isinstance(data, TrainSettings):
            return data
        if data is None:
            return cls()
        return cls(**dataclass_kwargs(cls, data, "train", TrainConfigError))


def _check_int(name: str, v: Any, low: int, optional: bool = False) -> None:
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise TrainConfigError(f"train.{name}: {v!r} is not an integer >= {low}")


def _validate_settings(s: TrainSettings) -> None:
    from .data import DATASETS

    if s.dataset not in DATASETS:
        raise TrainConfigError(f"train.dataset: {s.dataset!r} is not one of {list(DATASETS)}")
    if s.data_dir is not None and not isinstance(s.data_dir, (str, os.PathLike)):
        raise TrainConfigError(f"train.data_dir: {s.data_dir!r} is not a path")
    if s.dataset in ("cifar10", "imagefolder") and s.data_dir is None:
        raise TrainConfigError(f"train.data_dir: required for dataset {s.dataset!r}")
    _check_int("num_classes", s.num_classes, 2, optional=True)
    if s.num_classes is not None and s.dataset != "imagefolder":
        raise TrainConfigError(f"train.num_classes: {s.num_classes!r} applies to dataset 'imagefolder' only "
                               f"(dataset is {s.dataset!r})")
    if s.holdout is not None:
        h = s.holdout
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not math.isfinite(h) or h <= 0 or \
                (isinstance(h, float) and h >= 1.0 and h != int(h)):
            raise TrainConfigError(f"train.holdout: {h!r} is neither a fraction in (0, 1) nor a count >= 1")
    _check_int("num_workers", s.num_workers, 0)
    _check_int("seed", s.seed, 0)
    _check_int("data_seed", s.data_seed, 0)
    _check_int("eval_batch_size", s.eval_batch_size, 1)
    _check_int("threads", s.threads, 1, optional=True)
    _check_int("embedded_train_size", s.embedded_train_size, 10)
    _check_int("embedded_val_size", s.embedded_val_size, 10)
    _check_int("max_train_images", s.max_train_images, 1, optional=True)
    _check_int("max_val_images", s.max_val_images, 1, optional=True)
    for name in ("augment", "download", "checkpoint", "amp", "channels_last"):
        if not isinstance(getattr(s, name), bool):
            raise TrainConfigError(f"train.{name}: {getattr(s, name)!r} is not a boolean")
    t = s.distill_temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0 < t < math.inf):
        raise TrainConfigError(f"train.distill_temperature: {t!r} is not a positive number")
    if not isinstance(s.device, str):
        raise TrainConfigError(f"train.device: {s.device!r} is not a device string such as 'cpu' or 'cuda:0'")
    try:
        torch.device(s.device)
    except (RuntimeError, ValueError):
        raise TrainConfigError(f"train.device: {s.device!r} is not a device string such as 'cpu' or 'cuda:0'") from None
    if s.teacher is not None:
        if isinstance(s.teacher, Mapping):
            bad = sorted(set(s.teacher) - {"arch", "weights", "num_classes"})
            if bad or "arch" not in s.teacher:
                raise TrainConfigError(f"train.teacher: mapping keys {sorted(s.teacher)}; expected 'arch' and "
                                       "optionally 'weights', 'num_classes'")
        elif not isinstance(s.teacher, (str, os.PathLike)):
            raise TrainConfigError(f"train.teacher: {s.teacher!r} is not a zoo name, a path or a mapping")


# --------------------------------------------------------------------------------------------
# Optimizer and schedule


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
    raise TrainConfigError(f"recipe.optimizer: {recipe.optimizer!r} is not supported")


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


# --------------------------------------------------------------------------------------------
# Losses


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot targets with label smoothing: 1 - s + s/K on the label, s/K elsewhere."""
    t = torch.full((labels.shape[0], num_classes), smoothing / num_classes, device=labels.device)
    t.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + smoothing / num_classes)
    return t


def mixup(x: torch.Tensor, targets: torch.Tensor, alpha: float) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """Mix each sample with a random other one of the batch: lam ~ Beta(alpha, alpha) per batch,
    ``x' = lam x + (1 - lam) x[perm]`` and the same for the soft targets. Uses torch's global RNG."""
    if alpha <= 0 or x.shape[0] < 2:
        return x, targets, 1.0
    a = torch.tensor(float(alpha))
    lam = float(torch.distributions.Beta(a, a).sample())
    perm = torch.randperm(x.shape[0]).to(x.device)
    return lam * x + (1.0 - lam) * x[perm], lam * targets + (1.0 - lam) * targets[perm], lam


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened outputs, times T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student.float() / t, dim=-1), F.log_softmax(teacher.float() / t, dim=-1),
                    reduction="batchmean", log_target=True) * (t * t)


# --------------------------------------------------------------------------------------------
# Training


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
    from fbnet_zoo.io_utils import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_checkpoint(path: str, fingerprint: str) -> Optional[Dict[str, Any]]:
    if not os.path.isfile(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: start over rather than fail the candidate
        log.warning("ignoring unreadable checkpoint %s (%s)", path, e)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        log.warning("ignoring checkpoint %s: it belongs to another model/recipe/settings", path)
        return None
    return state


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


def evaluate(model: nn.Module, loader, device: torch.device, amp: bool = False,
             memory_format: torch.memory_format = torch.contiguous_format) -> Tuple[float, float]:
    """(top-1 %, mean cross-entropy) of ``model`` in eval mode over ``loader``."""
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if x.dim() == 4:
                x = x.contiguous(memory_format=memory_format)
            with _autocast(device, amp):
                out = model(x)
            loss_sum += float(F.cross_entropy(out.float(), y, reduction="sum"))
            correct += int((out.argmax(-1) == y).sum())
            total += int(y.shape[0])
    if total == 0:
        raise RuntimeError("the validation set is empty")
    return 100.0 * correct / total, loss_sum / total


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


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
    ``on_epoch_end(epoch, partial_result)``: called after each finished, checkpointed epoch.
    Divergence or an exception gives ``status="failed"`` with the reason; never raises (but
    KeyboardInterrupt and SystemExit pass through).
    """
    result = TrainResult(key=key, status="ok", epochs_planned=int(epochs) if isinstance(epochs, int) else 0)
    try:
        settings = TrainSettings.from_dict(settings)
        _train(model, recipe, epochs, train_data, val_data, settings, workdir, teacher, progress, num_classes,
               on_epoch_end, result)
    except Diverged as e:
        result.status, result.error = "failed", f"diverged: {e}"
        log.warning("%s: %s", key, result.error)
    except Exception as e:  # noqa: BLE001 - a failed candidate must not crash the search
        result.status, result.error = "failed", f"{type(e).__name__}: {e}"
        log.warning("%s failed: %s", key, result.error, exc_info=log.isEnabledFor(logging.DEBUG))
    return result


def _train(model: nn.Module, recipe: Recipe, epochs: int, train_data, val_data, settings: TrainSettings,
           workdir: Optional[str], teacher: Optional[nn.Module], progress: bool, num_classes: Optional[int],
           on_epoch_end, result: TrainResult) -> None:
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    if not isinstance(recipe, Recipe):
        recipe = Recipe.from_dict(recipe)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise TrainConfigError(f"epochs: {epochs!r} is not an integer >= 1")
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    num_classes = num_classes or _infer_num_classes(train_data)
    if teacher is None and settings.teacher is not None:
        teacher = load_teacher(settings.teacher)
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    if teacher is not None:
        teacher.to(device, memory_format=memory_format).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    class_index = getattr(train_data, "source_class_indices", None)
    class_index = torch.tensor(class_index, device=device) if class_index is not None else None

    optimizer = build_optimizer(model, recipe)
    ema = ModelEma(model, recipe.ema_decay) if recipe.ema else None
    hist: Dict[str, List[float]] = {"top1": [], "loss": [], "epoch_seconds": [], "val_loss": [], "lr": []}
    start = 0
    ckpt_path = os.path.join(workdir, CHECKPOINT_NAME) if (workdir and settings.checkpoint) else None
    fingerprint = _fingerprint(recipe, settings, result.key, model)
    if ckpt_path:
        state = _load_checkpoint(ckpt_path, fingerprint)
        if state is not None:
            start = int(state["epoch"])
            hist = {k: list(v) for k, v in state["history"].items()}
            if start < epochs:  # (a checkpoint beyond `epochs` already holds the answer)
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                if ema is not None:
                    ema.load_state_dict(state["ema"])
            result.extra["resumed_from"] = start
            log.info("%s: resuming after epoch %d", result.key, start)

    def publish(n: int) -> None:
        result.top1, result.loss, result.epoch_seconds = hist["top1"][:n], hist["loss"][:n], hist["epoch_seconds"][:n]
        result.extra.update(val_loss=hist["val_loss"][:n], lr=hist["lr"][:n])

    publish(min(start, epochs))
    if start >= epochs:
        return

    bs = recipe.batch_size
    pin = device.type == "cuda"
    gen = torch.Generator()
    loader = DataLoader(train_data, batch_size=bs, shuffle=True, generator=gen, num_workers=settings.num_workers,
                        drop_last=len(train_data) > bs, pin_memory=pin)
    val_loader = DataLoader(val_data, batch_size=settings.eval_batch_size, shuffle=False,
                            num_workers=settings.num_workers, pin_memory=pin)
    steps = len(loader)
    if steps == 0:
        raise RuntimeError("the training set is empty")
    result.extra["steps_per_epoch"] = steps
    mix, smoothing = recipe.mixup, recipe.label_smoothing
    kd_w = recipe.distill_weight if teacher is not None else 0.0
    temp = settings.distill_temperature
    bar = tqdm(total=(epochs - start) * steps, desc=result.key, unit="batch", leave=False, disable=not progress,
               dynamic_ncols=True)
    images_seen, train_time = 0, 0.0
    try:
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            torch.manual_seed(_epoch_seed(settings.seed, epoch))
            gen.manual_seed(_epoch_seed(settings.seed, epoch) + 1)
            model.train()
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            n_seen = 0
            for i, (x, y) in enumerate(loader):
                lr = lr_at(recipe, epoch, i, steps)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if x.dim() == 4:
                    x = x.contiguous(memory_format=memory_format)
                if num_classes is None:
                    raise TrainConfigError("num_classes: cannot infer the number of classes from the data; pass it")
                targets = soft_targets(y, num_classes, smoothing)
                x, targets, _ = mixup(x, targets, mix)
                with _autocast(device, settings.amp):
                    out = model(x)
                    loss = soft_cross_entropy(out, targets)
                    if kd_w > 0:
                        t_out = _teacher_logits(teacher, x, class_index, num_classes)
                        loss = kd_w * distillation_loss(out, t_out, temp) + (1.0 - kd_w) * loss
                if not bool(torch.isfinite(loss)):
                    raise Diverged(f"training loss is {float(loss.detach())} at epoch {epoch} step {i} (lr {lr:.4g})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if ema is not None:
                    ema.update(model)
                loss_sum += loss.detach() * x.shape[0]
                n_seen += x.shape[0]
                bar.update(1)
            train_seconds = time.perf_counter() - t0
            top1, val_loss = evaluate(ema.module if ema is not None else model, val_loader, device, settings.amp,
                                     memory_format)
            if not math.isfinite(val_loss):
                raise Diverged(f"validation loss is {val_loss} after epoch {epoch}")
            seconds = time.perf_counter() - t0
            hist["top1"].append(top1)
            hist["loss"].append(float(loss_sum) / max(n_seen, 1))
            hist["epoch_seconds"].append(seconds)
            hist["val_loss"].append(val_loss)
            hist["lr"].append(lr)
            images_seen += n_seen
            train_time += train_seconds
            if ckpt_path:
                _save_checkpoint(ckpt_path, {
                    "epoch": epoch + 1, "fingerprint": fingerprint, "history": hist,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None})
            publish(epoch + 1)
            result.extra["train_images_per_second"] = images_seen / max(train_time, 1e-9)
            bar.set_postfix(epoch=epoch + 1, loss=f"{hist['loss'][-1]:.3f}", top1=f"{top1:.1f}")
            log.info("%s epoch %d/%d: loss %.4f top1 %.2f%% (%.1fs)", result.key, epoch + 1, epochs,
                     hist["loss"][-1], top1, seconds)
            if on_epoch_end is not None:
                on_epoch_end(epoch, result)
    finally:
        bar.close()


# --------------------------------------------------------------------------------------------
# Candidates


_DATA_CACHE: Dict[Any, Tuple[Any, Any, int]] = {}
_TEACHER_CACHE: Dict[Any, nn.Module] = {}
_CACHE_LOCK = threading.Lock()


def cached_datasets(settings: TrainSettings, resolution: int):
    """``build_datasets`` memoised per process (one entry: a search reuses one dataset and a
    few resolutions; ImageFolder scans and the embedded generation are then paid once)."""
    from .data import build_datasets

    s = settings.to_dict()
    k = json.dumps({n: s[n] for n in ("dataset", "data_dir", "num_classes", "holdout", "data_seed", "augment",
                                      "embedded_train_size", "embedded_val_size", "max_train_images",
                                      "max_val_images", "download")}, sort_keys=True, default=str), resolution
    with _CACHE_LOCK:
        if k not in _DATA_CACHE:
            if len(_DATA_CACHE) >= 4:
                _DATA_CACHE.pop(next(iter(_DATA_CACHE)))
            _DATA_CACHE[k] = build_datasets(settings, resolution)
        return _DATA_CACHE[k]


def load_teacher(spec: Union[str, os.PathLike, Mapping[str, Any], nn.Module]) -> nn.Module:
    """A distillation teacher: an nn.Module as is; a zoo name / arch YAML path built with its
    pretrained weights; or ``{arch, weights, num_classes}``."""
    if isinstance(spec, nn.Module):
        return spec
    from fbnet_zoo import build_model

    if isinstance(spec, Mapping):
        arch, weights, nc = spec["arch"], spec.get("weights", True), spec.get("num_classes", 1000)
    else:
        arch, weights, nc = os.fspath(spec), True, 1000
    cache_key = json.dumps([str(arch), str(weights), nc])
    with _CACHE_LOCK:
        if cache_key not in _TEACHER_CACHE:
            _TEACHER_CACHE.clear()
            _TEACHER_CACHE[cache_key] = build_model(arch, num_classes=nc, pretrained=weights).eval()
        return _TEACHER_CACHE[cache_key]


def build_candidate_model(candidate: Candidate, num_classes: int) -> nn.Module:
    """The candidate's FBNet with the recipe's classifier dropout and stochastic depth."""
    from fbnet_zoo.model import FBNet

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
