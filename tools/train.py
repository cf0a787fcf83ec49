#!/usr/bin/env python
"""Final training of a zoo model or searched arch with a final recipe, on one device or many.

    # one device (CUDA when available, else CPU)
    python tools/train.py FBNetV3-B --config model_configs/recipes/fbnetv3_final.yaml \
        --data-dir /data/imagenet --workdir runs/fbnetv3_b
    # 8 GPUs on one node (DDP over NCCL; on CPU-only machines gloo)
    torchrun --standalone --nproc-per-node 8 tools/train.py runs/search/best_arch.yaml \
        --config model_configs/recipes/fbnetv3_final.yaml --data-dir /data/imagenet --workdir runs/winner
    # 8 nodes x 8 GPUs: the same command on every node (README: "Training a winner")
    torchrun --nnodes 8 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 --rdzv-id winner \
        tools/train.py ... --workdir /shared/runs/winner

ARCH: a zoo name (``python tools/model_info.py`` lists them) or an arch YAML (a search's winner).
--config: a final-training config (sections recipe / train / sync_bn) or a bare recipe YAML.
--set KEY=VALUE (repeatable): override a field, e.g. ``--set recipe.lr=0.02 --set train.num_workers=8``
(values parsed as YAML). Rerunning the same command resumes from ``workdir/checkpoint.pt``.
The trained (EMA) weights go to ``workdir/model_final.pth``: ``fbnet_zoo.build_model(ARCH,
num_classes=N, pretrained=PATH)`` loads them. Library: fbnet_zoo.training.final.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from fbnet_zoo.errors import FBNetZooError, TrainConfigError
from fbnet_zoo.io_utils import load_yaml
from fbnet_zoo.training.distributed import shutdown_distributed
from fbnet_zoo.training.final import load_final_config, train_final

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "model_configs", "recipes", "fbnetv3_final.yaml")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("arch", help="zoo name or arch YAML path")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="final-training config or recipe YAML (default: %(default)s)")
    p.add_argument("--workdir", required=True,
                   help="checkpoints, result.json and model_final.pth (on a filesystem all nodes share)")
    p.add_argument("--data-dir", help="ImageFolder root (train/<class>/..., val/<class>/...); sets train.data_dir")
    p.add_argument("--epochs", type=int, help="epochs to train (default: the recipe's)")
    p.add_argument("--teacher", help="distillation teacher: zoo name or arch YAML (sets train.teacher)")
    p.add_argument("--teacher-weights",
                   help="teacher checkpoint: path, URL or source name (default: its default source)")
    p.add_argument("--no-teacher", action="store_true", help="train without distillation")
    p.add_argument("--device", help="auto | cpu | cuda (sets train.device)")
    p.add_argument("--output", help="final checkpoint path (default: WORKDIR/model_final.pth)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override recipe.* / train.* / sync_bn")
    p.add_argument("--no-progress", action="store_true")
    return p


def overrides_from(args: argparse.Namespace) -> dict:
    out = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise TrainConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. recipe.lr=0.02")
        out[key.strip()] = load_yaml(value, f"--set {key.strip()}", TrainConfigError)
    if args.data_dir:
        out["train.data_dir"] = args.data_dir
        out.setdefault("train.dataset", "imagefolder")
    if args.device:
        out["train.device"] = args.device
    if args.no_teacher:
        out["train.teacher"] = None
    elif args.teacher:
        out["train.teacher"] = {"arch": args.teacher, "weights": args.teacher_weights or True}
    elif args.teacher_weights:
        raise TrainConfigError("--teacher-weights needs --teacher")
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s")
    try:
        config = load_final_config(args.config, overrides_from(args))
        result, path = train_final(args.arch, config, args.workdir, epochs=args.epochs, output=args.output,
                                   progress=not args.no_progress)
    except FBNetZooError as e:  # bad arch / config / data / checkpoint, or a diverged run
        print(f"tools/train.py: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown_distributed()
    if path:
        print(f"{result.key}: top-1 per epoch {[round(t, 2) for t in result.top1]}; weights: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
