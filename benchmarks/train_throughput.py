#!/usr/bin/env python3
"""Candidate-training throughput: fbnet_zoo.training's loop vs a plain torch training loop.

Both train the same small FBNet (the largest of the embedded search space) on the same
embedded data through the same DataLoader and torchvision transforms, in one process,
alternating, best of ``--repeats``. The plain loop is the minimum: forward, cross-entropy,
backward, SGD step. The trainer runs (a) the same minimal recipe (SGD, no EMA/mixup/...) and
(b) the full recipe machinery (TF-RMSProp, EMA, mixup, label smoothing, drop-path, warm-up,
per-epoch NaN checks). Goal (issue 5): the recipe machinery costs < 10% images/s.
Also measured: channels-last vs contiguous memory format, and optionally (``--search``) the
wall time of the embedded default search, ``python tools/search.py``.

DDP row (``--ddp``, or ``--ddp-only`` to run just it): final training's data-parallel path
(``fbnet_zoo.training.final.train_final``: DistributedSampler, DDP, SyncBN) with 2 gloo processes
vs 1 process, same global batch (64), same data and recipe, CPU, ``--threads`` threads per
process; reported as the ratio of global images/s (2 processes / 1 process; ideal 2.0 with two
free cores), plus 2 processes without SyncBN (what the per-layer BN all-reduces cost).

    python benchmarks/train_throughput.py [--images 2500] [--epochs 1] [--repeats 5] [--threads 1] [--search]
    python benchmarks/train_throughput.py --ddp-only [--ddp-repeats 2]

Writes benchmarks/results/train_throughput.json.
"""

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fbnet_zoo.io_utils import atomic_write_text
from fbnet_zoo.search.candidate import Candidate
from fbnet_zoo.search.trainer import build_candidate_model
from fbnet_zoo.spec import ArchSpec
from fbnet_zoo.training import Recipe, TrainSettings, cached_datasets, train_model
from fbnet_zoo.training.distributed import DistContext, shutdown_distributed
from fbnet_zoo.training.final import FinalConfig, train_final

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the largest network of model_configs/search/default.yaml's space
ARCH = ArchSpec.from_dict({"name": "embedded_max", "input_size": 32, "stages": [
    [{"type": "conv", "out_channels": 16, "stride": 2, "act": "hswish", "bias": True}],
    [{"type": "ir", "out_channels": 16, "kernel": 5, "expansion": 1, "act": "hswish"}],
    [{"type": "ir", "out_channels": 32, "stride": 2, "kernel": 5, "expansion": 4, "repeats": 2, "act": "hswish"}],
    [{"type": "ir", "out_channels": 48, "stride": 2, "kernel": 5, "expansion": 4, "repeats": 2, "se": True,
      "act": "hswish"}],
    [{"type": "ir_pool", "out_channels": 128, "expansion": 4, "act": "hswish"}]]})

MINIMAL = Recipe(optimizer="sgd", lr=0.005, momentum=0.9, weight_decay=0.0, ema=False, dropout=0.0, drop_path=0.0,
                 mixup=0.0, label_smoothing=0.0, warmup_epochs=0.0, lr_decay=1.0, batch_size=64, resolution=32)
FULL = Recipe(optimizer="rmsprop", lr=0.005, momentum=0.9, weight_decay=1e-5, ema=True, ema_decay=0.99,
              dropout=0.1, drop_path=0.1, mixup=0.2, label_smoothing=0.1, warmup_epochs=0.5, lr_decay=0.9,
              batch_size=64, resolution=32)


def plain_loop(settings: TrainSettings, epochs: int, channels_last: bool) -> float:
    """images/s of a minimal torch loop over the same data (training phase only)."""
    train, _, n_cls = cached_datasets(settings, 32)
    torch.manual_seed(0)
    model = build_candidate_model(Candidate("plain", ARCH, MINIMAL), n_cls)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=MINIMAL.lr * 4, momentum=0.9, nesterov=True)
    loader = DataLoader(train, batch_size=MINIMAL.batch_size, shuffle=True, drop_last=True)
    n, t = 0, 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        for x, y in loader:
            x = x.contiguous(memory_format=fmt)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += x.shape[0]
        t += time.perf_counter() - t0
    return n / t


def trainer(settings: TrainSettings, recipe: Recipe, epochs: int) -> float:
    train, val, n_cls = cached_datasets(settings, 32)
    torch.manual_seed(0)
    model = build_candidate_model(Candidate("bench", ARCH, recipe), n_cls)
    res = train_model(model, recipe, epochs, train, val, settings, progress=False, num_classes=n_cls)
    if not res.ok:
        raise RuntimeError(res.error)
    return res.extra["train_images_per_second"]


def _ddp_worker(rank: int, world: int, port: int, settings: TrainSettings, epochs: int, workdir: str,
                out: str, sync_bn: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    try:
        res, _ = train_final(ARCH, FinalConfig(FULL.replace(epochs=epochs), settings, sync_bn), workdir,
                             progress=False)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(res.extra["train_images_per_second"], f)
    finally:
        shutdown_distributed()


def final_training(settings: TrainSettings, epochs: int, world: int, sync_bn: bool = True) -> float:
    """Global images/s of final training's data-parallel path with ``world`` processes (1: in
    this process, through the same DistributedSampler path)."""
    settings = settings.replace(checkpoint=False)
    with tempfile.TemporaryDirectory() as tmp:
        if world == 1:
            res, _ = train_final(ARCH, FinalConfig(FULL.replace(epochs=epochs), settings), tmp, progress=False,
                                 dist=DistContext())
            return res.extra["train_images_per_second"]
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        out = os.path.join(tmp, "ips.json")
        mp.spawn(_ddp_worker, args=(world, port, settings, epochs, tmp, out, sync_bn), nprocs=world, join=True)
        with open(out) as f:
            return json.load(f)


def ddp_rows(settings: TrainSettings, epochs: int, repeats: int) -> dict:
    runs = {"1": (1, True), "2": (2, True), "2_no_sync_bn": (2, False)}
    best = {k: 0.0 for k in runs}
    for _ in range(repeats):  # alternate, keep the best of each
        for k, (world, sync_bn) in runs.items():
            best[k] = max(best[k], final_training(settings, epochs, world, sync_bn))
    ratio, ratio_plain = best["2"] / best["1"], best["2_no_sync_bn"] / best["1"]
    print(f"final training, 1 process:              {best['1']:8.1f} images/s")
    print(f"final training, DDP 2 gloo, SyncBN:     {best['2']:8.1f} images/s  (ratio {ratio:.2f}, ideal 2.0)")
    print(f"final training, DDP 2 gloo, no SyncBN:  {best['2_no_sync_bn']:8.1f} images/s  "
          f"(ratio {ratio_plain:.2f})")
    return {"global_batch": FULL.batch_size, "threads_per_process": settings.threads, "repeats": repeats,
            "one_process_images_per_s": round(best["1"], 1), "ddp_2_gloo_images_per_s": round(best["2"], 1),
            "ratio_2_vs_1": round(ratio, 3), "ddp_2_gloo_no_sync_bn_images_per_s": round(best["2_no_sync_bn"], 1),
            "ratio_2_no_sync_bn_vs_1": round(ratio_plain, 3), "cpus": len(os.sched_getaffinity(0)),
            "load_avg": os.getloadavg()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2500, help="embedded training images")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--search", action="store_true", help="also time `python tools/search.py` (the embedded default)")
    p.add_argument("--ddp", action="store_true", help="also the DDP row: 2 gloo processes vs 1, same global batch")
    p.add_argument("--ddp-only", action="store_true", help="only the DDP row (updates the results file's 'ddp')")
    p.add_argument("--ddp-repeats", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    settings = TrainSettings(embedded_train_size=args.images, embedded_val_size=500, threads=args.threads)
    path = os.path.join(RESULTS, "train_throughput.json")
    if args.ddp_only:
        out = {}
        if os.path.exists(path):
            with open(path) as f:
                out = json.load(f)
        out["ddp"] = ddp_rows(settings, args.epochs, args.ddp_repeats)
        os.makedirs(RESULTS, exist_ok=True)
        atomic_write_text(path, json.dumps(out, indent=2) + "\n")
        return
    cached_datasets(settings, 32)  # generate once, outside the timings
    runs = {
        "plain torch loop": lambda: plain_loop(settings, args.epochs, True),
        "trainer, minimal recipe": lambda: trainer(settings, MINIMAL, args.epochs),
        "trainer, full recipe": lambda: trainer(settings, FULL, args.epochs),
        "plain torch loop, contiguous (NCHW)": lambda: plain_loop(settings, args.epochs, False),
    }
    best = {k: 0.0 for k in runs}
    for _ in range(args.repeats):  # alternate, keep the best of each (the machine is shared and noisy)
        for k, fn in runs.items():
            best[k] = max(best[k], fn())
    base = best["plain torch loop"]
    rows = [{"run": k, "images_per_s": round(v, 1), "vs_plain": round(v / base, 3)} for k, v in best.items()]
    print(f"{'run':40s} {'images/s':>10s} {'vs plain':>9s}")
    for r in rows:
        print(f"{r['run']:40s} {r['images_per_s']:10.1f} {r['vs_plain']:9.3f}")
    overhead_min = 1 - best["trainer, minimal recipe"] / base
    overhead_full = 1 - best["trainer, full recipe"] / base
    epoch_s = args.images / best["trainer, full recipe"]
    print(f"trainer overhead: minimal recipe {overhead_min:+.1%}, full recipe {overhead_full:+.1%} (goal < 10%)")
    print(f"one epoch over {args.images} embedded images with the full recipe: {epoch_s:.1f} s "
          f"on {args.threads} thread(s)")
    out = {"benchmark": "train_throughput", "arch": ARCH.to_dict(), "images": args.images, "epochs": args.epochs,
           "repeats": args.repeats, "threads": args.threads, "batch_size": MINIMAL.batch_size, "rows": rows,
           "overhead_minimal_recipe": round(overhead_min, 4), "overhead_full_recipe": round(overhead_full, 4),
           "full_recipe_epoch_seconds": round(epoch_s, 2), "torch": torch.__version__,
           "machine": f"{platform.machine()} {os.cpu_count()} cpus", "load_avg_at_end": os.getloadavg()}
    if args.search:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "search.py"), "--run-dir",
                                   os.path.join(tmp, "run")], cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - t0
        out["embedded_default_search"] = {"wall_s": round(wall, 1), "returncode": proc.returncode}
        print(f"embedded default search (tools/search.py): {wall:.0f} s, exit code {proc.returncode}")
        if proc.returncode:
            print(proc.stderr[-2000:])
    if args.ddp:
        out["ddp"] = ddp_rows(settings, args.epochs, args.ddp_repeats)
    os.makedirs(RESULTS, exist_ok=True)
    atomic_write_text(path, json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
