"""Final training of a winner (``tools/train.py``): a zoo name or searched arch YAML, a final
recipe, one device or many processes under ``torchrun``.

The config (``model_configs/recipes/fbnetv3_final.yaml``) has three sections::

    recipe: {...}      # Recipe fields; batch_size is the GLOBAL batch (split over the processes)
    train: {...}       # TrainSettings fields: dataset, data_dir, teacher, distill_temperature, ...
    sync_bn: true      # BatchNorm statistics over the global batch when data-parallel

A file with Recipe fields only (a searched recipe) is taken as the ``recipe`` section.

The run reuses the training loop (``loop._setup`` / ``loop._train``) in its data-parallel mode:
a DistributedSampler over one seeded permutation per epoch, DDP gradients, SyncBN, losses and
metrics all-reduced, the epoch checkpoint ``workdir/checkpoint.pt`` written atomically by rank 0
(all ranks resume from it: a run killed mid-epoch restarts from its last finished epoch and ends
with the weights the uninterrupted run would have had), progress and epoch logs on rank 0.
The EMA weights (the model's when the recipe has no EMA) are evaluated each epoch and written
to ``workdir/model_final.pth``, which ``fbnet_zoo.build_model(arch, num_classes=N,
pretrained=PATH)`` loads and which a checkpoint-source YAML can point to.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from fbnet_zoo import SpecError, build_model, count_flops, load_spec
from fbnet_zoo.io_utils import atomic_write_bytes, atomic_write_text, read_yaml_file
from fbnet_zoo.spec import ArchSpec

from .datasets import build_datasets
from .distributed import DistContext, barrier, init_distributed
from .loop import _setup, _train, load_teacher
from .recipe import Recipe, RecipeError
from .result import TrainResult
from .settings import TrainConfigError, TrainSettings

log = logging.getLogger(__name__)

FINAL_NAME = "model_final.pth"
RESULT_NAME = "result.json"
CONFIG_SECTIONS = ("recipe", "train", "sync_bn")


@dataclass(frozen=True)
class FinalConfig:
    """A final-training config: the recipe, the run/data settings and whether BN is synchronised."""

    recipe: Recipe
    train: TrainSettings
    sync_bn: bool = True


def _set_path(data: Dict[str, Any], dotted: str, value: Any, where: str) -> None:
    section, _, key = dotted.partition(".")
    if section not in ("recipe", "train") or not key:
        if dotted == "sync_bn":
            data["sync_bn"] = value
            return
        raise TrainConfigError(f"{where}: {dotted!r} is not recipe.<field>, train.<field> or sync_bn")
    data.setdefault(section, {})[key] = value


def load_final_config(path: Union[str, os.PathLike, None] = None, overrides: Optional[Mapping[str, Any]] = None
                      ) -> FinalConfig:
    """Read a final-training config YAML (see the module docstring) and apply ``overrides``
    (``{"recipe.lr": 0.02, "train.data_dir": ..., "sync_bn": False}``)."""
    data: Dict[str, Any] = {}
    where = os.fspath(path) if path is not None else "config"
    if path is not None:
        raw = read_yaml_file(where, TrainConfigError) or {}
        if not isinstance(raw, Mapping):
            raise TrainConfigError(f"{where}: expected a mapping with sections {list(CONFIG_SECTIONS)}")
        if set(raw) <= set(CONFIG_SECTIONS):
            data = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
        else:  # a bare recipe (e.g. the search's best recipe)
            data = {"recipe": dict(raw)}
    for k, v in (overrides or {}).items():
        _set_path(data, k, v, "override")
    for sec in ("recipe", "train"):
        if data.get(sec) is not None and not isinstance(data[sec], Mapping):
            raise TrainConfigError(f"{where}: section {sec!r} is {data[sec]!r}, not a mapping")
    sync_bn = data.get("sync_bn", True)
    if not isinstance(sync_bn, bool):
        raise TrainConfigError(f"{where}: sync_bn: {sync_bn!r} is not a boolean")
    try:
        recipe = Recipe.from_dict(data.get("recipe") or {})
    except RecipeError as e:
        raise RecipeError(f"{where}: {e}") from None
    try:
        train = TrainSettings.from_dict(data.get("train") or {})
    except TrainConfigError as e:
        raise TrainConfigError(f"{where}: {e}") from None
    return FinalConfig(recipe, train, sync_bn)


def save_final_checkpoint(path: str, state_dict: Mapping[str, torch.Tensor], spec: ArchSpec, num_classes: int,
                          meta: Mapping[str, Any]) -> None:
    """Write the trained weights where ``build_model(..., pretrained=path)`` reads them: our key
    names under ``state_dict`` (checkpoints.read_state_dict unwraps it), plus plain metadata,
    all loadable with ``torch.load(weights_only=True)``."""
    state = {"state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
             "arch": spec.to_dict(), "num_classes": int(num_classes), **dict(meta)}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def train_final(arch: Union[str, os.PathLike, ArchSpec, Mapping[str, Any]], config: FinalConfig, workdir: str,
                epochs: Optional[int] = None, output: Optional[str] = None, progress: bool = True,
                dist: Optional[DistContext] = None) -> Tuple[TrainResult, Optional[str]]:
    """Train ``arch`` with ``config`` in ``workdir`` (resuming from its checkpoint); returns the
    result and, on rank 0, the path of the final checkpoint (None on the other ranks).

    ``dist``: this process's place in the job (default: ``init_distributed(config.train.device)``,
    which joins torchrun's process group when launched by torchrun). Raises on failure: a final
    run has no search to carry on."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):  # else os.makedirs fails after the data is read
        raise TrainConfigError(f"workdir {workdir!r} is a file, not a folder")
    ctx = dist if dist is not None else init_distributed(config.train.device)
    settings = config.train.replace(device=str(ctx.device))
    recipe = config.recipe
    epochs = recipe.epochs if epochs is None else epochs
    spec = load_spec(arch)
    resolution = recipe.resolution or spec.input_size
    try:  # an arch that runs out of pixels at this size fails here, not in a conv of the first step
        count_flops(spec, input_size=resolution, num_classes=0)
    except SpecError as e:
        raise RecipeError(f"recipe.resolution {resolution} does not fit {spec.name}: {e}") from None
    train_data, val_data, num_classes = build_datasets(settings, resolution)
    torch.manual_seed(settings.seed)  # the same initial weights on every process
    model = build_model(spec, num_classes=num_classes, dropout=recipe.dropout,
                        drop_path_rate=min(recipe.drop_path, 0.95))
    teacher = load_teacher(settings.teacher) if settings.teacher is not None else None
    if ctx.is_main:
        os.makedirs(workdir, exist_ok=True)
        log.info("final training of %s: %d epochs at %d px, global batch %d on %d process(es) (%s), sync BN %s, "
                 "EMA %s, teacher %s", spec.name, epochs, resolution, recipe.batch_size, ctx.world_size,
                 ctx.device, config.sync_bn and ctx.distributed, recipe.ema,
                 settings.teacher if settings.teacher is not None else "none")
    barrier(ctx)
    result = TrainResult(key=spec.name, status="ok", epochs_planned=epochs)
    run = _setup(model, recipe, epochs, train_data, settings, workdir, teacher, num_classes, result,
                 dist=ctx, sync_bn=config.sync_bn)
    t0 = time.perf_counter()
    _train(run, epochs, train_data, val_data, progress, None, keep_checkpoint=True)  # never overwrite a user's run
    result.extra.update(world_size=ctx.world_size, step_losses=run.step_losses,
                        wall_seconds=time.perf_counter() - t0)
    path = None
    if ctx.is_main:
        path = output or os.path.join(workdir, FINAL_NAME)
        weights = run.ema.module if run.ema is not None else run.model
        save_final_checkpoint(path, weights.state_dict(), spec, num_classes, {
            "weights": "ema" if run.ema is not None else "model", "epochs": epochs, "recipe": recipe.to_dict(),
            "top1": list(result.top1), "world_size": ctx.world_size})
        atomic_write_text(os.path.join(workdir, RESULT_NAME), json.dumps(result.to_dict(), indent=1) + "\n")
        log.info("%s: final top-1 %.2f%% (%s weights) -> %s", spec.name, result.top1[-1] if result.top1 else
                 float("nan"), "EMA" if run.ema is not None else "model", path)
    barrier(ctx)
    return result, path
