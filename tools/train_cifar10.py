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
EfficientNet, randomly initialised, adapted the same way) and is trained by
``fbnet_zoo.training.train_model`` with one recipe: the CIFAR defaults
(``fbnet_zoo.training.cifar10.DEFAULT_RECIPE``), updated by ``--recipe recipe.yaml`` and the
flags. No distillation. The experiment lives in ``fbnet_zoo.training.cifar10``; this script
only parses arguments.

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
import sys
from typing import Optional, Sequence

from fbnet_zoo.training.cifar10 import CifarError, build_recipe, expand_archs, parse_base, resolve_arch, run_experiment


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
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast (default: on for CUDA, off on CPU)")
    p.add_argument("--workers", type=int, default=None,
                   help="data loader worker processes (default: 0, CIFAR-10 is held in memory)")
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
    except CifarError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    if args.dry_run:
        if args.resume and args.overwrite:
            raise CifarError("--resume and --overwrite exclude each other")
        jobs = [resolve_arch(a, parse_base(args.cifar_base), args.resolution) for a in expand_archs(args.arch)]
        build_recipe(args.recipe, {"batch_size": args.batch_size, "lr": args.lr})
        print("| model | from | input | MFLOPs | params (M) | stride 1 now |\n|---|---|---:|---:|---:|---|")
        for j in jobs:
            print(f"| {j.name} | {j.request} | {j.input_size} | {j.flops / 1e6:.1f} | {j.params / 1e6:.2f} | "
                  f"{j.unstrided} |")
        return 0

    def report(rec) -> None:
        if rec.get("warning"):
            print(f"warning: {rec['warning']}", file=sys.stderr)
        top1 = rec["final_top1"]
        print(f"{rec['arch']}: {rec['status']}"
              + (f", top-1 {top1:.2f}% after {rec['epochs_done']} epoch(s)" if top1 is not None else "")
              + (f" ({rec['error']})" if rec.get("error") else "") + f" -> {rec['path']}")

    settings = {"download": args.download, "device": args.device, "amp": args.amp, "num_workers": args.workers,
                "threads": args.threads, "seed": args.seed, "max_train_images": args.max_train_images,
                "max_val_images": args.max_val_images}
    records = run_experiment(args.data, args.arch, args.out, recipe_path=args.recipe,
                             recipe_overrides={"batch_size": args.batch_size, "lr": args.lr}, epochs=args.epochs,
                             resolution=args.resolution, cifar_base=args.cifar_base, resume=args.resume,
                             overwrite=args.overwrite, settings=settings, progress=not args.no_progress,
                             on_record=report)
    with open(os.path.join(args.out, "results_table.md"), encoding="utf-8") as f:
        print(f.read().rstrip())
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
