#!/usr/bin/env python3
"""Export a zoo model for deployment: BN folded, TorchScript and/or ONNX, checked against eager.

    python tools/export.py --arch FBNetV3-B-timm --pretrained timm --format both --out exported/
    python tools/export.py --arch my_arch.yaml --weights ckpt.pth --num-classes 10 \
        --format onnx --input-size 224 --dynamic batch,height,width --out model.onnx

--out is a directory (files named after the arch) or, for a single format, a file name. A
file name made from the arch name must be one plain name inside --out: an arch named
``../../x`` or ``/abs`` is refused (fbnet_zoo.io_utils.output_file), never written elsewhere.
"""

import argparse
import logging
import os
import sys

import fbnet_zoo
from fbnet_zoo.checkpoints import CheckpointError
from fbnet_zoo.deploy import DeployError, check_onnx, example_input, export_onnx, export_torchscript
from fbnet_zoo.io_utils import UnsafeNameError, output_file


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, help="zoo name or arch YAML")
    p.add_argument("--weights", help="checkpoint path / URL / source name (default: random init)")
    p.add_argument("--pretrained", nargs="?", const=True, default=None,
                   help="load the arch's default source (or the named one)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--format", choices=["torchscript", "onnx", "both"], default="both")
    p.add_argument("--out", required=True)
    p.add_argument("--input-size", type=int, help="default: the arch's input size")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dynamic", default="batch", help="comma-separated ONNX dynamic axes: batch,height,width")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-fold", action="store_true", help="keep BatchNorm layers")
    p.add_argument("--trace", action="store_true", help="TorchScript by tracing instead of scripting")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    pretrained = args.weights or args.pretrained or False
    try:
        model = fbnet_zoo.build_model(args.arch, num_classes=args.num_classes, pretrained=pretrained).eval()
        name = fbnet_zoo.normalize_name(model.spec.name)
        formats = ["torchscript", "onnx"] if args.format == "both" else [args.format]
        is_dir = len(formats) > 1 or os.path.isdir(args.out) or args.out.endswith(os.sep)
        x = example_input(model, args.batch, args.input_size)
        for fmt in formats:
            ext = ".ts" if fmt == "torchscript" else ".onnx"
            path = output_file(args.out, name, ext, what="arch name") if is_dir else args.out
            if fmt == "torchscript":
                export_torchscript(model, path, fold=not args.no_fold, method="trace" if args.trace else "script",
                                   example=x)
                print(f"torchscript: {path}")
            else:
                export_onnx(model, path, fold=not args.no_fold, batch=args.batch, input_size=args.input_size,
                            opset=args.opset, dynamic=[d for d in args.dynamic.split(",") if d])
                print(f"onnx: {path} (onnxruntime vs eager max |diff| {check_onnx(path, model, x):.2e})")
    except (CheckpointError, DeployError, UnsafeNameError, fbnet_zoo.SpecError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
