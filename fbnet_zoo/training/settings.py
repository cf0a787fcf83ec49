"""Training settings: what data to train on (``DataSettings``) and how to run (``RunSettings``).

``TrainSettings`` is the flat mapping a search config's ``train:`` section and the tools hand
over (one namespace of keys, as before); ``settings.data`` and ``settings.run`` are its two
halves. Datasets only see ``DataSettings``; the loop sees both.

Hardware defaults (``device: auto``, ``num_workers: null``, ``amp: null``) are resolved by
``resolve_hardware`` when a run starts, which logs what it chose and why.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Union

import torch

from fbnet_zoo.errors import TrainConfigError  # noqa: F401 - re-exported (its home is fbnet_zoo.errors)

from .data.registry import DATASETS
from .recipe import dataclass_kwargs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSettings:
    """Which images, split how (the data half of ``TrainSettings``; see its docstring)."""

    dataset: str = "embedded"
    data_dir: Optional[str] = None
    num_classes: Optional[int] = None
    holdout: Union[int, float, None] = None
    data_seed: int = 0
    augment: bool = True
    embedded_train_size: int = 2500
    embedded_val_size: int = 1000
    max_train_images: Optional[int] = None
    max_val_images: Optional[int] = None
    download: bool = False

    def __post_init__(self) -> None:
        _validate_data(self)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Union[Mapping[str, Any], "DataSettings", "TrainSettings", None]) -> "DataSettings":
        if isinstance(data, DataSettings):
            return data
        # a mapping is a ``train:`` section, whose run keys are checked too
        return TrainSettings.from_dict(data).data


@dataclass(frozen=True)
class RunSettings:
    """Where and how a run executes (the run half of ``TrainSettings``)."""

    device: str = "auto"
    seed: int = 0
    num_workers: Optional[int] = None
    cpus: Optional[int] = None
    threads: Optional[int] = 1
    teacher: Union[None, str, Mapping[str, Any]] = None
    distill_temperature: float = 1.0
    eval_batch_size: int = 256
    checkpoint: bool = True
    amp: Optional[bool] = None
    channels_last: bool = True

    def __post_init__(self) -> None:
        _validate_run(self)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        if isinstance(self.teacher, Mapping):
            d["teacher"] = dict(self.teacher)
        return d


_DATA_FIELDS = tuple(f.name for f in dataclasses.fields(DataSettings))
_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunSettings))


@dataclass(frozen=True)
class TrainSettings(RunSettings, DataSettings):
    """Where and how candidates train (the search config's ``train:`` section).

    The fields of both halves, data first (``DataSettings``):
    dataset: a registered dataset: "embedded" (default, generated in memory), "cifar10"
      (``data_dir`` holds ``cifar-10-batches-py``) or "imagefolder" (``data_dir`` holds
      ``train/`` [and ``val/``]).
    num_classes: ImageFolder only: keep this many random classes (the paper: 200 of ImageNet).
    holdout: carve the validation set from the training images (a count, or a fraction in
      (0, 1)) instead of using the dataset's own validation/test split (the paper held out 10K).
    data_seed: seeds the dataset itself (class choice, hold-out split, embedded generation);
      ``seed`` seeds model initialisation, shuffling, augmentation and mixup.
    max_train_images / max_val_images: use a seeded random subset (quick runs).
    embedded_train_size / embedded_val_size: size of the generated embedded splits.

    Run (``RunSettings``):
    device: "auto" (default: CUDA when available, else CPU; the choice is logged), "cpu",
      "cuda", "cuda:1", ...
    num_workers: data-loader worker processes; None (default) sizes them to the CPUs given:
      0 for the in-memory datasets (embedded, cifar10: nothing to decode, and the main process
      then draws every random number, so runs stay bit-identical), ``cpus - 1`` (at least 1,
      at most 16) for datasets decoded from files (imagefolder).
    cpus: the CPUs this run may use; None: ``os.sched_getaffinity`` (the Ray executor passes
      its per-candidate reservation).
    teacher: distillation teacher: a zoo name or arch YAML path (loaded with its pretrained
      weights), or a mapping ``{arch: ..., weights: path|URL|source (default: the default
      source), num_classes: 1000}``; None trains without distillation.
    threads: torch CPU threads for this process while training (default 1: search candidates are
      small and train fastest single-threaded, and two threads on a busy 2-core machine were
      measured 10-30x slower; parallelism comes from running candidates side by side, e.g. on
      Ray, whose tasks use ``num_cpus_per_candidate`` threads). None leaves torch's setting alone.
    amp: bfloat16 autocast; None (default): on for CUDA devices, off on CPU.
    channels_last: train in NHWC memory format (default on: the fast layout for convolutions on
      CUDA, and about 1.4x faster for small FBNets on CPU too).
    """

    def __post_init__(self) -> None:
        _validate_data(self)
        _validate_run(self)

    @property
    def data(self) -> DataSettings:
        return DataSettings(**{k: getattr(self, k) for k in _DATA_FIELDS})

    @property
    def run(self) -> RunSettings:
        return RunSettings(**{k: getattr(self, k) for k in _RUN_FIELDS})

    def replace(self, **changes: Any) -> "TrainSettings":
        return dataclasses.replace(self, **changes)

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


def _check_bool(s: Any, names, optional: bool = False) -> None:
    for name in names:
        v = getattr(s, name)
        if not (isinstance(v, bool) or (optional and v is None)):
            raise TrainConfigError(f"train.{name}: {v!r} is not a boolean{' or null (auto)' if optional else ''}")


def _validate_data(s: DataSettings) -> None:
    if s.dataset not in DATASETS:
        raise TrainConfigError(f"train.dataset: {s.dataset!r} is not one of {sorted(DATASETS)}")
    if s.data_dir is not None and not isinstance(s.data_dir, (str, os.PathLike)):
        raise TrainConfigError(f"train.data_dir: {s.data_dir!r} is not a path")
    if DATASETS[s.dataset].needs_dir and s.data_dir is None:
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
    _check_int("data_seed", s.data_seed, 0)
    _check_int("embedded_train_size", s.embedded_train_size, 10)
    _check_int("embedded_val_size", s.embedded_val_size, 10)
    _check_int("max_train_images", s.max_train_images, 1, optional=True)
    _check_int("max_val_images", s.max_val_images, 1, optional=True)
    _check_bool(s, ("augment", "download"))


def _validate_run(s: RunSettings) -> None:
    _check_int("num_workers", s.num_workers, 0, optional=True)
    _check_int("cpus", s.cpus, 1, optional=True)
    _check_int("seed", s.seed, 0)
    _check_int("eval_batch_size", s.eval_batch_size, 1)
    _check_int("threads", s.threads, 1, optional=True)
    _check_bool(s, ("checkpoint", "channels_last"))
    _check_bool(s, ("amp",), optional=True)
    t = s.distill_temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0 < t < math.inf):
        raise TrainConfigError(f"train.distill_temperature: {t!r} is not a positive number")
    bad_device = f"train.device: {s.device!r} is not 'auto' or a device string such as 'cpu' or 'cuda:0'"
    if not isinstance(s.device, str):
        raise TrainConfigError(bad_device)
    if s.device != "auto":
        try:
            torch.device(s.device)
        except (RuntimeError, ValueError):
            raise TrainConfigError(bad_device) from None
    if s.teacher is not None:
        if isinstance(s.teacher, Mapping):
            bad = sorted(set(s.teacher) - {"arch", "weights", "num_classes"})
            if bad or "arch" not in s.teacher:
                raise TrainConfigError(f"train.teacher: mapping keys {sorted(s.teacher)}; expected 'arch' and "
                                       "optionally 'weights', 'num_classes'")
        elif not isinstance(s.teacher, (str, os.PathLike)):
            raise TrainConfigError(f"train.teacher: {s.teacher!r} is not a zoo name, a path or a mapping")


# --------------------------------------------------------------------------------------------
# Hardware: what "auto" becomes on this machine


@dataclass(frozen=True)
class Hardware:
    """What a run uses, resolved from ``RunSettings`` on this machine."""

    device: torch.device
    amp: bool
    channels_last: bool
    num_workers: int
    cpus: int

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which container CPU sets narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows have no affinity mask
        return os.cpu_count() or 1


def resolve_device(device: str) -> torch.device:
    """``"auto"``: the current CUDA device when CUDA is available, else the CPU; the choice and
    the reason are logged. Any other string is taken as given."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        chosen = torch.device("cuda", torch.cuda.current_device())
        log.info("device auto: %s (%s; %d CUDA device(s) visible)", chosen, torch.cuda.get_device_name(chosen),
                 torch.cuda.device_count())
        return chosen
    log.info("device auto: cpu (no CUDA device available: torch.cuda.is_available() is False)")
    return torch.device("cpu")


def resolve_hardware(settings: Union[TrainSettings, RunSettings], dataset: str = "embedded") -> Hardware:
    """Device, bf16 autocast, memory format and data-loader workers for ``settings`` on this
    machine (the rules are in ``TrainSettings``' docstring); logs one line saying what was chosen."""
    run = settings.run if isinstance(settings, TrainSettings) else settings
    device = resolve_device(run.device)
    cuda = device.type == "cuda"
    amp = cuda if run.amp is None else (run.amp and cuda)
    cpus = run.cpus or available_cpus()
    if run.num_workers is not None:
        workers, why = run.num_workers, "as set"
    elif dataset in DATASETS and DATASETS[dataset].in_memory:
        workers, why = 0, f"{dataset!r} is held in memory"
    else:
        workers, why = max(1, min(16, cpus - 1)), f"{cpus} CPU(s) given"
    hw = Hardware(device=device, amp=amp, channels_last=run.channels_last, num_workers=workers, cpus=cpus)
    log.info("training on %s: bf16 autocast %s, channels_last %s, %d data-loader worker(s) (%s), torch threads %s",
             device, "on" if amp else "off", "on" if hw.channels_last else "off", workers, why,
             run.threads if run.threads is not None else torch.get_num_threads())
    return hw
