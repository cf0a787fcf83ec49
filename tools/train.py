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

    # int8: quantization-aware training of trained weights, distilled from their own fp32 outputs
    python tools/train.py FBNetV3-B --qat --weights runs/fbnetv3_b/model_final.pth \
        --data-dir /data/imagenet --workdir runs/fbnetv3_b_qat

--qat starts from --weights, trains the fake-quant model on the KD loss to the fp32 model's
logits (one process; recipe: fbnet_zoo.training.qat.DISTILL_QAT_RECIPE unless --config is
given) and writes the int8 TorchScript to ``workdir/model_int8.ts`` (--output) and its top-1
agreement with fp32 on the validation set to ``workdir/qat_result.json``. Library:
fbnet_zoo.training.qat.
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
from fbnet_zoo.training.qat import DISTILL_QAT_RECIPE, qat_final

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "model_configs", "recipes", "fbnetv3_final.yaml")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("arch", help="zoo name or arch YAML path")
    p.add_argument("--config", default=None,
                   help=f"final-training config or recipe YAML (default: {DEFAULT_CONFIG}; with --qat: "
                        "fbnet_zoo.training.qat.DISTILL_QAT_RECIPE and default train settings)")
    p.add_argument("--workdir", required=True,
                   help="checkpoints, result.json and model_final.pth (on a filesystem all nodes share)")
    p.add_argument("--data-dir", help="ImageFolder root (train/<class>/..., val/<class>/...); sets train.data_dir")
    p.add_argument("--epochs", type=int, help="epochs to train (default: the recipe's)")
    p.add_argument("--teacher", help="distillation teacher: zoo name or arch YAML (sets train.teacher)")
    p.add_argument("--teacher-weights",
                   help="teacher checkpoint: path, URL or source name (default: its default source)")
    p.add_argument("--no-teacher", action="store_true", help="train without distillation")
    p.add_argument("--device", help="auto | cpu | cuda (sets train.device)")
    p.add_argument("--output", help="final checkpoint path (default: WORKDIR/model_final.pth; with --qat: the int8 "
                                    "TorchScript, default WORKDIR/model_int8.ts)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override recipe.* / train.* / sync_bn")
    p.add_argument("--no-progress", action="store_true")
    qat = p.add_argument_group("int8 (--qat)")
    qat.add_argument("--qat", action="store_true",
                     help="quantization-aware training of --weights, distilled from its own fp32 outputs; writes "
                          "the int8 TorchScript (WORKDIR/model_int8.ts or --output)")
    qat.add_argument("--weights", help="--qat: the trained fp32 checkpoint (path, URL or source name) it starts from")
    qat.add_argument("--backend", help="--qat: fbgemm | x86 | onednn | qnnpack (default: x86 on x86, qnnpack on ARM)")
    qat.add_argument("--bit-split", choices=["activations", "weights", "none"],
                     help="--qat: which side gives up a bit against AVX2's int16 pair sums (prepare_qat's "
                          "reduce_range; default: the backend's, on x86 'weights')")
    qat.add_argument("--calibration-images", type=int,
                     help="--qat: training images that set the activation ranges before training (default 256)")
    return p


QAT_ONLY = ("weights", "backend", "bit_split", "calibration_images")


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


def check_flags(args: argparse.Namespace) -> None:
    """Refuse flag combinations that mean nothing, naming the flag and what is allowed."""
    flag = lambda name: "--" + name.replace("_", "-")  # noqa: E731
    if not args.qat:
        given = [flag(k) for k in QAT_ONLY if getattr(args, k) is not None]
        if given:
            raise TrainConfigError(f"{', '.join(given)}: only with --qat (final training starts from scratch)")
        return
    if args.weights is None:
        raise TrainConfigError("--qat needs --weights: the trained fp32 checkpoint it starts from and distils from")
    teacher = [f for f, v in (("--teacher", args.teacher), ("--teacher-weights", args.teacher_weights),
                              ("--no-teacher", args.no_teacher)) if v]
    if teacher:
        raise TrainConfigError(f"{', '.join(teacher)}: not with --qat (its teacher is the --weights model itself)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TrainConfigError("--qat runs in one process, not under torchrun (WORLD_SIZE "
                               f"{os.environ['WORLD_SIZE']})")


def run_qat(args: argparse.Namespace, overrides: dict) -> int:
    if args.config is None:  # the distilled-QAT recipe, then --set
        base = {f"recipe.{k}": v for k, v in DISTILL_QAT_RECIPE.to_dict().items()}
        config = load_final_config(None, {**base, **overrides})
    else:
        config = load_final_config(args.config, overrides)
    recipe = config.recipe
    epochs = recipe.epochs if args.epochs is None else args.epochs
    out, path, agreement = qat_final(args.arch, args.weights, recipe, config.train, args.workdir, epochs,
                                     output=args.output, calibration_images=256 if args.calibration_images is None else args.calibration_images,
                                     backend=args.backend, reduce_range=args.bit_split,
                                     progress=not args.no_progress)
    print(f"{out.result.key}: QAT top-1 per epoch {[round(t, 2) for t in out.result.top1]}; int8 agrees with fp32 "
          f"on {100 * agreement:.2f}% of the validation images; int8 TorchScript: {path}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s")
    try:
        check_flags(args)
        if args.qat:
            return run_qat(args, overrides_from(args))
        config = load_final_config(args.config or DEFAULT_CONFIG, overrides_from(args))
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
