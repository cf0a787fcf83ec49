#!/usr/bin/env python
"""Train and evaluate zoo / searched FBNets and EfficientNet baselines on CIFAR-10
(the transfer experiment of the FBNetV3 paper, Sec. 4.3).

    python tools/train_cifar10.py DATA --arch FBNetV3-A --arch FBNetV3-E --arch efficientnet_b0
    python tools/train_cifar10.py DATA --arch fbnetv3 --epochs 200 --out runs/cifar10
    python tools/train_cifar10.py DATA --arch path/to/searched.yaml --resume
    python tools/train_cifar10.py DATA --arch fbnetv3 --dry-run   # variants, sizes, FLOPs only

DATA is the standard ``cifar-10-batches-py`` folder (python pickle batches data_batch_1..5,
test_batch, batches.meta) or its parent; ``--download`` fetches it there with torchvision
(machines with internet only). Evaluation uses CIFAR-10's test batch.

Each ``--arch`` (zoo name, arch YAML path, ``fbnetv3`` for the paper's FBNetV3-A..G, ``zoo``
for every registered model, or a baseline
``efficientnet_b0``..``b3``) becomes its CIFAR variant (fbnet_zoo.cifar: the second stride-2
block set to stride 1, input 32x32 grown by the model's own resolution scaling; timm's
EfficientNet, randomly initialised, adapted the same way) and is trained by the search's
trainer (``fbnet_zoo.search.trainer.train_model``) with one recipe: the CIFAR defaults below,
updated by ``--recipe recipe.yaml`` and the flags. No distillation.

Per arch, ``OUT/<arch>-cifar/`` holds ``checkpoint.pt`` (after every epoch), ``arch.yaml``,
``recipe.yaml`` and ``results.json`` (atomic; rewritten after every epoch with status
"running", "ok" at the end, or "failed" with the reason). ``--resume`` continues from the
checkpoint (also with a larger ``--epochs``); without it an existing checkpoint is an error
(``--overwrite`` starts over). The table of all runs is printed and written to
``OUT/results_table.md``; ``tools/plot_cifar10.py OUT`` draws accuracy vs FLOPs.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

# The CIFAR-10 recipe (fbnet_zoo.search.recipe.Recipe fields). SGD (x4 lr multiplier -> 0.1
# at batch 128), 5 warm-up epochs, per-epoch exponential decay, EMA, light regularisation.
# ``epochs`` is the default for --epochs; ``resolution`` is set per arch by the CIFAR rule.
DEFAULT_RECIPE: Dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 0.025,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "ema": True,
    "ema_decay": 0.9998,
    "dropout": 0.2,
    "drop_path": 0.1,
    "mixup": 0.0,
    "label_smoothing": 0.1,
    "warmup_epochs": 5.0,
    "lr_decay": 0.97,
    "epochs": 200,
    "batch_size": 128,
}

log = logging.getLogger("train_cifar10")


class CifarCliError(Exception):
    """A problem with the command line's inputs, reported as ``error: ...`` and exit status 2."""


@dataclass
class Job:
    """One arch to train: what the user named and what it became."""

    request: str
    name: str            # variant name, e.g. "FBNetV3-A-CIFAR"
    family: str
    input_size: int
    flops: int
    params: int
    spec: Any = None     # ArchSpec for FBNets, None for baselines
    baseline: Optional[str] = None
    unstrided: str = ""

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_").replace("_cifar", "-cifar")


# ------------------------------------------------------------------------------------ archs
def _expand(requests: Sequence[str]) -> List[str]:
    from fbnet_zoo import list_models

    out: List[str] = []
    for item in requests:
        for part in (p.strip() for p in item.split(",")):
            if not part:
                continue
            if part.lower() == "zoo":
                out.extend(list_models())
            elif part.lower() == "fbnetv3":
                out.extend(n for n in list_models() if re.fullmatch(r"FBNetV3-[A-G]", n))
            else:
                out.append(part)
    return list(dict.fromkeys(out))


def _parse_base(text: Optional[str]) -> Any:
    if text is None:
        return None
    return int(text) if text.isdigit() else text


def resolve_arch(request: str, cifar_base: Any = None, resolution: Optional[int] = None) -> Job:
    """The CIFAR variant of one --arch value; CifarCliError naming the arch if it is unknown."""
    from fbnet_zoo import SpecError, UnknownModelError, count_flops, count_params, list_models, load_spec
    from fbnet_zoo.cifar import (CIFAR_NUM_CLASSES, CIFAR_SUFFIX, EFFICIENTNET_RESOLUTIONS, cifar_baseline,
                                 cifar_variant, is_baseline, unstrided_block)
    from fbnet_zoo.complexity import fvcore_flops

    if is_baseline(request):
        model, size, changed = cifar_baseline(request)
        if resolution is not None:
            size = resolution
        key = request.strip().lower().replace("-", "_")
        return Job(request, f"{key}{CIFAR_SUFFIX}", "EfficientNet (timm)", size, fvcore_flops(model, input_size=size),
                   sum(p.numel() for p in model.parameters()), baseline=key, unstrided=changed)
    looks_like_file = request.endswith((".yaml", ".yml")) or os.sep in request
    if looks_like_file and not os.path.isfile(request):
        raise CifarCliError(f"--arch {request!r}: no such arch YAML file")
    try:
        source = load_spec(request)  # a YAML is read once
        spec = cifar_variant(source, base=cifar_base, resolution=resolution)
        si, ri = unstrided_block(source)
    except UnknownModelError as e:
        raise CifarCliError(f"--arch {request!r}: {e}; known: zoo models {list_models()}, 'zoo' (all of them), "
                            f"baselines {sorted(EFFICIENTNET_RESOLUTIONS)}, or an arch YAML path") from None
    except SpecError as e:
        raise CifarCliError(f"--arch {request!r}: {e}") from None
    if looks_like_file:
        family = "searched"
    else:
        family = "FBNetV3" if spec.name.lower().startswith("fbnetv3") else "registered"
    return Job(request, spec.name, family, spec.input_size, count_flops(spec, num_classes=CIFAR_NUM_CLASSES),
               count_params(spec, num_classes=CIFAR_NUM_CLASSES), spec=spec, unstrided=f"stages[{si}][{ri}]")


# ------------------------------------------------------------------------------------ recipe
def build_recipe(path: Optional[str], overrides: Dict[str, Any]):
    import yaml

    from fbnet_zoo.search.recipe import Recipe, RecipeError

    data = dict(DEFAULT_RECIPE)
    if path is not None:
        if not os.path.isfile(path):
            raise CifarCliError(f"--recipe {path!r}: no such file")
        try:
            with open(path, "r", encoding="utf-8") as f:
                loaded = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as e:
            raise CifarCliError(f"--recipe {path!r}: cannot read YAML ({e})") from None
        if not isinstance(loaded, dict):
            raise CifarCliError(f"--recipe {path!r}: expected a mapping of recipe fields, got {type(loaded).__name__}")
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Recipe.from_dict(data)
    except (RecipeError, TypeError) as e:
        raise CifarCliError(f"recipe: {e}") from None


# ------------------------------------------------------------------------------------ data
def check_data_dir(path: str, download: bool) -> None:
    """Fail early, before any model is built, on a folder that cannot be CIFAR-10."""
    if download:
        return
    if not os.path.exists(path):
        raise CifarCliError(f"data folder {path!r} does not exist (give the cifar-10-batches-py folder or its "
                            "parent, or pass --download on a machine with internet)")
    if not os.path.isdir(path):
        raise CifarCliError(f"data folder {path!r} is not a folder (expected cifar-10-batches-py with "
                            "data_batch_1..5, test_batch, batches.meta)")


# ------------------------------------------------------------------------------------ results
def _write_json(path: str, data: Dict[str, Any]) -> None:
    import json

    from fbnet_zoo.io_utils import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def results_record(job: Job, recipe: Any, settings: Any, result: Any, status: str, epochs: int,
                   wall_seconds: float) -> Dict[str, Any]:
    from fbnet_zoo.cifar import CIFAR_SUFFIX, RESULTS_SCHEMA

    top1 = list(result.top1) if result is not None else []
    return {
        "schema": RESULTS_SCHEMA,
        "arch": job.name,
        "source": job.request,
        "family": job.family,
        "label": job.name[: -len(CIFAR_SUFFIX)] if job.name.endswith(CIFAR_SUFFIX) else job.name,
        "input_size": job.input_size,
        "flops": job.flops,
        "params": job.params,
        "flops_convention": "fvcore, 1 multiply-add = 1 flop, 10 classes, at input_size",
        "unstrided": job.unstrided,
        "status": status,
        "error": getattr(result, "error", None),
        "epochs_planned": epochs,
        "epochs_done": len(top1),
        "top1": top1,
        "final_top1": top1[-1] if (top1 and status == "ok") else None,
        "best_top1": max(top1) if top1 else None,
        "loss": list(result.loss) if result is not None else [],
        "val_loss": list(result.extra.get("val_loss", [])) if result is not None else [],
        "epoch_seconds": list(result.epoch_seconds) if result is not None else [],
        "resumed_from": result.extra.get("resumed_from") if result is not None else None,
        "train_images_per_second": result.extra.get("train_images_per_second") if result is not None else None,
        "wall_seconds": wall_seconds,
        "recipe": recipe.to_dict(),
        "settings": {k: v for k, v in settings.to_dict().items() if k != "teacher"},
        "arch_spec": job.spec.to_dict() if job.spec is not None else None,
        "baseline": job.baseline,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) if status != "running" else None,
    }


# ------------------------------------------------------------------------------------ training
def build_job_model(job: Job, recipe: Any, seed: int):
    import torch

    from fbnet_zoo.cifar import CIFAR_NUM_CLASSES, cifar_baseline
    from fbnet_zoo.model import FBNet

    torch.manual_seed(seed)
    if job.baseline is not None:
        model, _, _ = cifar_baseline(job.baseline, drop_rate=recipe.dropout, drop_path_rate=recipe.drop_path)
        return model
    return FBNet(job.spec, num_classes=CIFAR_NUM_CLASSES, dropout=recipe.dropout, drop_path_rate=recipe.drop_path)


def run_job(job: Job, recipe: Any, settings: Any, epochs: int, out_dir: str, resume: bool, overwrite: bool,
            progress: bool) -> Dict[str, Any]:
    from fbnet_zoo.search.trainer import CHECKPOINT_NAME, cached_datasets, train_model

    run_dir = os.path.join(out_dir, job.slug)
    ckpt = os.path.join(run_dir, CHECKPOINT_NAME)
    results_path = os.path.join(run_dir, "results.json")
    had_checkpoint = os.path.exists(ckpt)
    if had_checkpoint and not resume:
        if not overwrite:
            raise CifarCliError(f"{run_dir}: already holds a checkpoint; pass --resume to continue it or "
                                "--overwrite to start over")
        os.remove(ckpt)
    if overwrite and os.path.exists(results_path):
        os.remove(results_path)
    os.makedirs(run_dir, exist_ok=True)
    recipe = recipe.replace(resolution=job.input_size)
    recipe.save_yaml(os.path.join(run_dir, "recipe.yaml"))
    if job.spec is not None:
        job.spec.save_yaml(os.path.join(run_dir, "arch.yaml"))

    train_data, val_data, num_classes = cached_datasets(settings, job.input_size)
    model = build_job_model(job, recipe, settings.seed)
    t0 = time.perf_counter()

    def on_epoch_end(epoch: int, partial: Any) -> None:
        _write_json(results_path, results_record(job, recipe, settings, partial, "running", epochs,
                                                 time.perf_counter() - t0))

    result = train_model(model, recipe, epochs, train_data, val_data, settings, workdir=run_dir, key=job.name,
                         progress=progress, num_classes=num_classes, on_epoch_end=on_epoch_end)
    if resume and had_checkpoint and "resumed_from" not in result.extra:
        log.warning("%s: the checkpoint in %s belongs to another recipe/settings/model; trained from scratch",
                    job.name, run_dir)
        print(f"warning: {job.name}: checkpoint did not match this recipe/settings, started over", file=sys.stderr)
    record = results_record(job, recipe, settings, result, result.status, epochs, time.perf_counter() - t0)
    record["path"] = results_path
    _write_json(results_path, {k: v for k, v in record.items() if k != "path"})
    return record


# ------------------------------------------------------------------------------------ CLI
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="the cifar-10-batches-py folder, or the folder that holds it")
    p.add_argument("--arch", action="append", required=True,
                   help="zoo name, arch YAML, 'fbnetv3' (FBNetV3-A..G), 'zoo' (every registered model) or "
                        "efficientnet_b0..b3; repeat or comma-separate")
    p.add_argument("--out", default=os.path.join("runs", "cifar10"), help="output folder (default: runs/cifar10)")
    p.add_argument("--recipe", default=None, help="recipe YAML (Recipe fields) updating the CIFAR defaults")
    p.add_argument("--epochs", type=int, default=None, help="epochs to train (default: the recipe's epochs)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="base lr (RMSProp-equivalent; SGD uses x4)")
    p.add_argument("--resolution", type=int, default=None, help="force this input size for every arch")
    p.add_argument("--cifar-base", default=None,
                   help="scale resolutions relative to this zoo name / YAML / input size instead of each "
                        "model's own family base")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in OUT")
    p.add_argument("--overwrite", action="store_true", help="discard existing checkpoints in OUT and start over")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 into DATA with torchvision")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train-images", type=int, default=None, help="seeded random subset (quick runs)")
    p.add_argument("--max-val-images", type=int, default=None, help="seeded random subset of the test batch")
    p.add_argument("--dry-run", action="store_true", help="print the variants and their FLOPs, train nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        return _main(args)
    except CifarCliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from fbnet_zoo.cifar import results_table
    from fbnet_zoo.io_utils import atomic_write_text
    from fbnet_zoo.search.data import DataError
    from fbnet_zoo.search.trainer import TrainConfigError, TrainSettings, cached_datasets

    if args.resume and args.overwrite:
        raise CifarCliError("--resume and --overwrite exclude each other")
    # Everything the user named is checked before anything trains.
    jobs = [resolve_arch(a, _parse_base(args.cifar_base), args.resolution) for a in _expand(args.arch)]
    if not jobs:
        raise CifarCliError("--arch: no architecture given")
    recipe = build_recipe(args.recipe, {"batch_size": args.batch_size, "lr": args.lr})
    epochs = args.epochs if args.epochs is not None else recipe.epochs
    if epochs < 1:
        raise CifarCliError(f"--epochs: {epochs} is not a positive number of epochs")
    if args.dry_run:
        print("| model | from | input | MFLOPs | params (M) | stride 1 now |\n|---|---|---:|---:|---:|---|")
        for j in jobs:
            print(f"| {j.name} | {j.request} | {j.input_size} | {j.flops / 1e6:.1f} | {j.params / 1e6:.2f} | "
                  f"{j.unstrided} |")
        return 0
    check_data_dir(args.data, args.download)
    try:
        settings = TrainSettings(dataset="cifar10", data_dir=os.path.abspath(args.data), download=args.download,
                                 device=args.device, amp=args.amp, num_workers=args.workers, threads=args.threads,
                                 seed=args.seed, max_train_images=args.max_train_images,
                                 max_val_images=args.max_val_images)
        cached_datasets(settings, jobs[0].input_size)  # reads and checks the folder once, up front
    except (DataError, TrainConfigError) as e:
        hint = "" if args.download else " (or pass --download on a machine with internet)"
        raise CifarCliError(f"{e}{hint if 'cifar-10-batches-py' in str(e) else ''}") from None
    os.makedirs(args.out, exist_ok=True)
    records = []
    for job in tqdm(jobs, desc="archs", unit="arch", disable=args.no_progress or len(jobs) == 1):
        rec = run_job(job, recipe, settings, epochs, args.out, args.resume, args.overwrite, not args.no_progress)
        records.append(rec)
        top1 = rec["final_top1"]
        print(f"{job.name}: {rec['status']}"
              + (f", top-1 {top1:.2f}% after {rec['epochs_done']} epoch(s)" if top1 is not None else "")
              + (f" ({rec['error']})" if rec.get("error") else "") + f" -> {rec['path']}")
    table = results_table(records)
    atomic_write_text(os.path.join(args.out, "results_table.md"), table + "\n")
    print(table)
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
