"""The CIFAR-10 transfer experiment of the FBNetV3 paper (Sec. 4.3): zoo / searched FBNets and
timm EfficientNet baselines, made into CIFAR variants, trained with one recipe, written as
results files (``OUT/<arch>-cifar/results.json``) that ``load_results`` / ``results_table`` read.

The variant rule for FBNets is ``fbnet_zoo.cifar.cifar_variant``; the EfficientNet baselines
(``cifar_baseline``) are adapted the same way (their second stride-2 conv set to stride 1,
input 32 for b0, grown by EfficientNet's own resolution scaling). ``run_experiment`` is what
``tools/train_cifar10.py`` calls after parsing its arguments.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from fbnet_zoo import UnknownModelError, count_flops, count_params, list_models, load_spec
from fbnet_zoo.cifar import CIFAR_BASE_RESOLUTION, CIFAR_NUM_CLASSES, CIFAR_SUFFIX, cifar_variant, unstrided_block
from fbnet_zoo.complexity import fvcore_flops
from fbnet_zoo.errors import CifarError, ResultsError  # noqa: F401 - re-exported (their home is fbnet_zoo.errors)
from fbnet_zoo.io_utils import atomic_path, atomic_write_text
from fbnet_zoo.model import FBNet
from fbnet_zoo.spec import SpecError

from .data import DataError
from .datasets import cached_datasets
from .loop import CHECKPOINT_NAME, train_model
from .recipe import Recipe, RecipeError
from .settings import TrainConfigError, TrainSettings

log = logging.getLogger(__name__)


# The CIFAR-10 recipe (Recipe fields). SGD (x4 lr multiplier -> 0.1 at batch 128), 5 warm-up
# epochs, per-epoch exponential decay, EMA, light regularisation. ``epochs`` is the default
# number of epochs; ``resolution`` is set per arch by the CIFAR rule.
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


# --------------------------------------------------------------------------------------------
# Baselines
# EfficientNet's own compound-scaling resolutions (Tan & Le 2019, Table/code: b0..b3), so the
# baselines follow the same resolution rule with efficientnet_b0 as the family base.
EFFICIENTNET_RESOLUTIONS = {"efficientnet_b0": 224, "efficientnet_b1": 240, "efficientnet_b2": 260,
                            "efficientnet_b3": 300}


def is_baseline(name: Any) -> bool:
    return isinstance(name, str) and name.strip().lower().replace("-", "_") in EFFICIENTNET_RESOLUTIONS


def unstride_module(model: Any, which: int = 2) -> str:
    """Set the ``which``-th stride-2 ``nn.Conv2d`` of ``model`` (registration order, which is
    forward order for timm's and torchvision's EfficientNets; the stem conv is the first) to
    stride 1, in place. Returns its module name. Only convs whose padding is "same" for
    stride 1 (``(kernel - 1) // 2``, or timm's dynamically padded ``Conv2dSame``) qualify,
    so the map keeps its size."""
    seen = []
    for mod_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and tuple(module.stride) == (2, 2):
            seen.append((mod_name, module))
    if len(seen) < which:
        raise ValueError(f"{type(model).__name__}: has {len(seen)} stride-2 conv(s), none is number {which}")
    mod_name, conv = seen[which - 1]
    same = tuple((k - 1) // 2 for k in conv.kernel_size)
    dynamic = type(conv).__name__ == "Conv2dSame"
    if not dynamic and tuple(conv.padding) != same:
        raise ValueError(f"{mod_name}: padding {tuple(conv.padding)} is not 'same' {same} for stride 1")
    conv.stride = (1, 1)
    return mod_name


def cifar_baseline(name: str, num_classes: int = CIFAR_NUM_CLASSES, which: int = 2,
                   base_resolution: int = CIFAR_BASE_RESOLUTION, drop_path_rate: float = 0.0,
                   drop_rate: Optional[float] = None) -> Tuple[Any, int, str]:
    """timm's EfficientNet ``name`` (random init) adapted to CIFAR the same way as the FBNets:
    the second stride-2 conv (the first block of its second stage, after the stem) becomes
    stride 1, and the input size is 32 for b0, grown by EfficientNet's own resolution scaling
    (b1 240/224 -> 34, b2 -> 37, b3 -> 43). Returns (model, input size, unstrided module name)."""
    key = name.strip().lower().replace("-", "_")
    if key not in EFFICIENTNET_RESOLUTIONS:
        raise ValueError(f"baseline: {name!r} is not one of {sorted(EFFICIENTNET_RESOLUTIONS)}")
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is in the test extras
        raise ImportError("EfficientNet baselines need timm: pip install timm") from None
    kwargs: dict = {"pretrained": False, "num_classes": num_classes, "drop_path_rate": drop_path_rate}
    if drop_rate is not None:
        kwargs["drop_rate"] = drop_rate
    model = timm.create_model(key, **kwargs)
    changed = unstride_module(model, which)
    ratio = EFFICIENTNET_RESOLUTIONS[key] / EFFICIENTNET_RESOLUTIONS["efficientnet_b0"]
    size = max(base_resolution, int(round(base_resolution * ratio)))
    return model, size, changed


# --------------------------------------------------------------------------------------------
# Results files (written by run_job, read by tools/plot_cifar10.py)
RESULTS_NAME = "results.json"
RESULTS_SCHEMA = "fbnet_zoo.cifar10.results/v1"


def find_results(paths: Any) -> list:
    """``results.json`` files among ``paths`` (files, or folders searched recursively)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                if RESULTS_NAME in files:
                    found.append(os.path.join(root, RESULTS_NAME))
        elif os.path.isfile(p):
            found.append(p)
        else:
            raise ResultsError(f"{p}: no such results file or folder")
    return sorted(dict.fromkeys(found))


def load_results(paths: Any) -> list:
    """The parsed results files among ``paths`` (see ``find_results``)."""
    rows = []
    for path in find_results(paths):
        try:
            with open(path, "r", encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ResultsError(f"{path}: cannot read results JSON ({e})") from None
        if not isinstance(data, dict) or data.get("schema") != RESULTS_SCHEMA:
            raise ResultsError(f"{path}: not a CIFAR-10 results file (expected schema {RESULTS_SCHEMA!r})")
        data["path"] = path
        rows.append(data)
    return rows


def results_table(rows: Any) -> str:
    """Markdown table of results rows, by family then FLOPs (the README's table)."""
    lines = ["| model | family | input | MFLOPs | params (M) | epochs | top-1 (%) | best top-1 (%) | status |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (str(r.get("family")), r.get("flops", 0), str(r.get("arch")))):
        final, best = r.get("final_top1"), r.get("best_top1")
        status = r.get("status", "?") + (f": {str(r['error'])[:60]}" if r.get("error") else "")
        lines.append(
            f"| {r.get('arch')} | {r.get('family')} | {r.get('input_size')} | {r.get('flops', 0) / 1e6:.1f} | "
            f"{r.get('params', 0) / 1e6:.2f} | {len(r.get('top1') or [])}/{r.get('epochs_planned')} | "
            f"{'-' if final is None else f'{final:.2f}'} | {'-' if best is None else f'{best:.2f}'} | {status} |")
    return "\n".join(lines)


def _final(row: Dict[str, Any]) -> Optional[float]:
    return row.get("final_top1") if row.get("status") == "ok" else None


def plot_results(rows: Sequence[Dict[str, Any]], out: str, title: str = "CIFAR-10 transfer") -> int:
    """Write the accuracy-vs-MFLOPs figure; returns the number of points plotted."""
    import matplotlib  # optional dependency (the search extra): only plotting needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        if _final(r) is not None:
            families.setdefault(r.get("family", "other"), []).append(r)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    markers = ["o", "s", "^", "D", "v", "P"]
    n = 0
    for i, (family, members) in enumerate(sorted(families.items())):
        members.sort(key=lambda r: r["flops"])
        xs = [r["flops"] / 1e6 for r in members]
        ys = [_final(r) for r in members]
        ax.plot(xs, ys, marker=markers[i % len(markers)], label=family)
        for r, x, y in zip(members, xs, ys):
            ax.annotate(r.get("label") or r["arch"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        n += len(members)
    ax.set_xlabel("MFLOPs (fvcore, at the CIFAR input size)")
    ax.set_ylabel("CIFAR-10 top-1 (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if families:
        ax.legend()
    try:
        with atomic_path(out, suffix=os.path.splitext(out)[1]) as tmp:  # savefig picks the format by extension
            fig.savefig(tmp, dpi=150, bbox_inches="tight")
    finally:
        plt.close(fig)
    return n


# --------------------------------------------------------------------------------------------
# Jobs: what the user named, what it became, and how it trains


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
def expand_archs(requests: Sequence[str]) -> List[str]:
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


def parse_base(text: Optional[str]) -> Any:
    if text is None:
        return None
    return int(text) if text.isdigit() else text


def resolve_arch(request: str, cifar_base: Any = None, resolution: Optional[int] = None) -> Job:
    """The CIFAR variant of one --arch value; CifarError naming the arch if it is unknown."""
    if is_baseline(request):
        model, size, changed = cifar_baseline(request)
        if resolution is not None:
            size = resolution
        key = request.strip().lower().replace("-", "_")
        return Job(request, f"{key}{CIFAR_SUFFIX}", "EfficientNet (timm)", size, fvcore_flops(model, input_size=size),
                   sum(p.numel() for p in model.parameters()), baseline=key, unstrided=changed)
    looks_like_file = request.endswith((".yaml", ".yml")) or os.sep in request
    if looks_like_file and not os.path.isfile(request):
        raise CifarError(f"--arch {request!r}: no such arch YAML file")
    try:
        source = load_spec(request)  # a YAML is read once
        spec = cifar_variant(source, base=cifar_base, resolution=resolution)
        si, ri = unstrided_block(source)
        flops = count_flops(spec, num_classes=CIFAR_NUM_CLASSES)  # SpecError if the input size is too small
    except UnknownModelError as e:
        raise CifarError(f"--arch {request!r}: {e}; known: zoo models {list_models()}, 'zoo' (all of them), "
                            f"baselines {sorted(EFFICIENTNET_RESOLUTIONS)}, or an arch YAML path") from None
    except SpecError as e:
        raise CifarError(f"--arch {request!r}: {e}") from None
    if looks_like_file:
        family = "searched"
    else:
        family = "FBNetV3" if spec.name.lower().startswith("fbnetv3") else "registered"
    return Job(request, spec.name, family, spec.input_size, flops,
               count_params(spec, num_classes=CIFAR_NUM_CLASSES), spec=spec, unstrided=f"stages[{si}][{ri}]")


# ------------------------------------------------------------------------------------ recipe
def build_recipe(path: Optional[str], overrides: Dict[str, Any]):
    data = dict(DEFAULT_RECIPE)
    if path is not None:
        if not os.path.isfile(path):
            raise CifarError(f"--recipe {path!r}: no such file")
        try:
            with open(path, "r", encoding="utf-8") as f:
                loaded = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as e:
            raise CifarError(f"--recipe {path!r}: cannot read YAML ({e})") from None
        if not isinstance(loaded, dict):
            raise CifarError(f"--recipe {path!r}: expected a mapping of recipe fields, got {type(loaded).__name__}")
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Recipe.from_dict(data)
    except (RecipeError, TypeError) as e:
        raise CifarError(f"recipe: {e}") from None


# ------------------------------------------------------------------------------------ data
def check_data_dir(path: str, download: bool) -> None:
    """Fail early, before any model is built, on a folder that cannot be CIFAR-10."""
    if download:
        return
    if not os.path.exists(path):
        raise CifarError(f"data folder {path!r} does not exist (give the cifar-10-batches-py folder or its "
                            "parent, or pass --download on a machine with internet)")
    if not os.path.isdir(path):
        raise CifarError(f"data folder {path!r} is not a folder (expected cifar-10-batches-py with "
                            "data_batch_1..5, test_batch, batches.meta)")


# ------------------------------------------------------------------------------------ results
def _write_json(path: str, data: Dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def results_record(job: Job, recipe: Any, settings: Any, result: Any, status: str, epochs: int,
                   wall_seconds: float) -> Dict[str, Any]:
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
    torch.manual_seed(seed)
    if job.baseline is not None:
        model, _, _ = cifar_baseline(job.baseline, drop_rate=recipe.dropout, drop_path_rate=recipe.drop_path)
        return model
    return FBNet(job.spec, num_classes=CIFAR_NUM_CLASSES, dropout=recipe.dropout, drop_path_rate=recipe.drop_path)


def check_resumable(ckpt: str) -> None:
    """CifarError if ``ckpt`` exists but cannot be read: the loop would ignore it and start over,
    overwriting it and the run's results.json (it said the checkpoint "did not match")."""
    if not os.path.isfile(ckpt):
        return
    try:
        torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError / UnpicklingError / OSError / EOFError for damage
        detail = str(e).splitlines()[0][:160] if str(e) else ""
        raise CifarError(f"--resume: {ckpt} cannot be read ({type(e).__name__}: {detail}); move it away or pass "
                         "--overwrite to start that arch over") from None


def run_job(job: Job, recipe: Any, settings: Any, epochs: int, out_dir: str, resume: bool, overwrite: bool,
            progress: bool) -> Dict[str, Any]:
    run_dir = os.path.join(out_dir, job.slug)
    ckpt = os.path.join(run_dir, CHECKPOINT_NAME)
    results_path = os.path.join(run_dir, "results.json")
    had_checkpoint = os.path.exists(ckpt)
    if had_checkpoint and not resume:
        if not overwrite:
            raise CifarError(f"{run_dir}: already holds a checkpoint; pass --resume to continue it or "
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
    record = results_record(job, recipe, settings, result, result.status, epochs, time.perf_counter() - t0)
    _write_json(results_path, record)
    record["path"] = results_path
    if resume and had_checkpoint and "resumed_from" not in result.extra:
        record["warning"] = f"{job.name}: checkpoint did not match this recipe/settings, started over"
        log.warning("%s: the checkpoint in %s belongs to another recipe/settings/model; trained from scratch",
                    job.name, run_dir)
    return record


def run_experiment(data_dir: str, archs: Sequence[str], out_dir: str, recipe_path: Optional[str] = None,
                   recipe_overrides: Optional[Dict[str, Any]] = None, epochs: Optional[int] = None,
                   resolution: Optional[int] = None, cifar_base: Optional[str] = None, resume: bool = False,
                   overwrite: bool = False, settings: Optional[Dict[str, Any]] = None, progress: bool = True,
                   on_record=None) -> List[Dict[str, Any]]:
    """Resolve every arch, check the recipe and the data (all before anything trains), train each
    job in turn and write ``OUT/results_table.md``. ``settings``: TrainSettings fields on top of
    the CIFAR-10 dataset at ``data_dir``. ``on_record(record)`` is called after each job.
    Returns the results records."""
    if resume and overwrite:
        raise CifarError("--resume and --overwrite exclude each other")
    jobs = [resolve_arch(a, parse_base(cifar_base), resolution) for a in expand_archs(archs)]
    if not jobs:
        raise CifarError("--arch: no architecture given")
    recipe = build_recipe(recipe_path, recipe_overrides or {})
    epochs = epochs if epochs is not None else recipe.epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise CifarError(f"--epochs: {epochs} is not a positive number of epochs")
    download = bool((settings or {}).get("download", False))
    check_data_dir(data_dir, download)
    try:
        train = TrainSettings.from_dict({**(settings or {}), "dataset": "cifar10",
                                         "data_dir": os.path.abspath(data_dir)})
        cached_datasets(train, jobs[0].input_size)  # reads and checks the folder once, up front
    except (DataError, TrainConfigError) as e:
        hint = "" if download else " (or pass --download on a machine with internet)"
        raise CifarError(f"{e}{hint if 'cifar-10-batches-py' in str(e) else ''}") from None
    if resume:
        for job in jobs:
            check_resumable(os.path.join(out_dir, job.slug, CHECKPOINT_NAME))
    os.makedirs(out_dir, exist_ok=True)
    records = []
    for job in tqdm(jobs, desc="archs", unit="arch", disable=not progress or len(jobs) == 1):
        rec = run_job(job, recipe, train, epochs, out_dir, resume, overwrite, progress)
        records.append(rec)
        if on_record is not None:
            on_record(rec)
    atomic_write_text(os.path.join(out_dir, "results_table.md"), results_table(records) + "\n")
    return records
