#!/usr/bin/env python3
"""Export a zoo model for deployment: BN folded, TorchScript and/or ONNX, checked against eager;
or int8 (post-training static quantization, TorchScript).

    python tools/export.py --arch FBNetV3-B-timm --pretrained timm --format both --out exported/
    python tools/export.py --arch my_arch.yaml --weights ckpt.pth --num-classes 10 \
        --format onnx --input-size 224 --dynamic batch,height,width --out model.onnx
    python tools/export.py --arch FBNetV3-B-timm --pretrained --format int8 \
        --calibration /data/imagenet/train --calibration-images 256 --out exported/
    # a detectron2 detector (config + weights, or an authors' d2go source), one TorchScript file
    # with the post-processing; int8: every FBNet part quantized, calibrated on image files
    python tools/export.py --detector model_configs/detection/faster_rcnn_fbnetv3a_C4.yaml \
        --weights output/model_final.pth --format int8 --calibration /data/coco/train2017 \
        --calibration-images 64 --out exported/detector_int8.ts
    python tools/export.py --detector FBNetV3-A-d2go:faster_rcnn_c4 --format torchscript \
        --calibration /data/coco/val2017 --out exported/

int8 calibrates on --calibration (a folder of images, searched recursively, resized and
centre-cropped to the input size with ImageNet normalisation); without it, on generated
images (the embedded procedural set), which is worse than a few hundred real ones. It
reports the top-1 agreement with fp32 on held-out images of the same kind.

--detector needs detectron2; --calibration is required for it (the export is traced on the
first image; int8 calibrates on all of them); KEY VALUE config overrides go after --opts.
A detector exports as torchscript (the default: fp32) or int8.
FPN detectors export whole (int8: the FBNet trunk and the FPN one int8 graph) with at most 200
RPN boxes per level before NMS (MODEL.RPN.PRE_NMS_TOPK_TEST capped: above that torchvision's NMS
orders equal scores differently traced than eager, and the file would not equal the model).

--out is a directory (files named after the arch) or, for a single format, a file name. A
file name made from the arch name must be one plain name inside --out: an arch named
``../../x`` or ``/abs`` is refused (fbnet_zoo.io_utils.output_file), never written elsewhere.
"""

import argparse
import glob
import logging
import os
import sys

import torch

import fbnet_zoo
from fbnet_zoo.errors import FBNetZooError, check_int
from fbnet_zoo.deploy import DeployError, check_onnx, example_input, export_onnx, export_torchscript
from fbnet_zoo.io_utils import UnsafeNameError, output_file
from fbnet_zoo.quantize import export_int8_torchscript, quantize_static, top1_agreement
from fbnet_zoo.training.data import make_embedded_arrays

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def calibration_images(folder, n, size, seed):
    """(calibration, held-out) image tensors: from ``folder`` (every image file below it, in sorted
    order, shuffled by ``seed``) or generated; held-out is a disjoint quarter of the same kind."""
    n_held = max(1, n // 4)
    if folder is None:
        images, _ = make_embedded_arrays(n + n_held, seed=seed, size=size)
        x = _normalise(torch.from_numpy(images))
        return x[:n], x[n:]
    from PIL import Image
    from torchvision import transforms

    files = sorted(f for f in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                   if f.lower().endswith(IMAGE_EXTS))
    if len(files) < 2:
        raise ValueError(f"--calibration {folder}: found {len(files)} image files ({', '.join(IMAGE_EXTS)})")
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    files = [files[i] for i in order[:n + n_held]]
    tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()])
    images = []
    for f in files:
        with Image.open(f) as im:
            images.append(tf(im.convert("RGB")))
    x = _normalise(torch.stack(images))
    split = max(1, len(files) - n_held) if len(files) < n + n_held else n
    return x[:split], x[split:]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", help="zoo name or arch YAML")
    which.add_argument("--detector", help="detectron2 config YAML (MODEL.FBNET) or an authors' d2go source "
                       "(FBNetV3-A-d2go:faster_rcnn_c4); formats torchscript | int8")
    p.add_argument("--opts", nargs="*", default=[], help="--detector: KEY VALUE config overrides")
    p.add_argument("--weights", help="checkpoint path / URL / source name (default: random init)")
    p.add_argument("--pretrained", nargs="?", const=True, default=None,
                   help="load the arch's default source (or the named one)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--format", choices=["torchscript", "onnx", "both", "int8"], default=None,
                   help="default: both (TorchScript and ONNX) for --arch, torchscript for --detector (its fp32 "
                        "export); int8: post-training static quantization, saved as TorchScript (<name>_int8.ts)")
    p.add_argument("--calibration", help="int8: folder of calibration images (default: generated images)")
    p.add_argument("--calibration-images", type=int, default=128, help="int8: number of calibration images")
    p.add_argument("--backend", default=None, help="int8: fbgemm | x86 | onednn | qnnpack (default: x86 on x86, "
                   "qnnpack on ARM)")
    p.add_argument("--bit-split", choices=["activations", "weights", "none"], default=None,
                   help="int8: which side gives up a bit against AVX2's int16 pair sums (quantize_static's "
                        "reduce_range; default: weights -- 8-bit activations, 7-bit weights -- on fbgemm / x86 and "
                        "on onednn without VNNI, none on qnnpack and on onednn with VNNI; none is exact only on "
                        "VNNI / AMX CPUs)")
    p.add_argument("--keep-float", default="", help="int8: comma-separated submodules left in fp32 "
                   "(e.g. stages.0,classifier)")
    p.add_argument("--seed", type=int, default=0, help="int8: seed of the calibration sample")
    p.add_argument("--out", required=True)
    p.add_argument("--input-size", type=int, help="default: the arch's input size")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dynamic", default="batch", help="comma-separated ONNX dynamic axes: batch,height,width")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-fold", action="store_true", help="keep BatchNorm layers")
    p.add_argument("--trace", action="store_true", help="TorchScript by tracing instead of scripting")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:  # bad numbers: one line here, not a traceback from deep inside the export
        check_int("--batch", args.batch, 1, error=DeployError)
        check_int("--calibration-images", args.calibration_images, 1, error=DeployError)
    except DeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.detector:
        args.format = args.format or "torchscript"
        return _export_detector(args)
    args.format = args.format or "both"
    pretrained = args.weights or args.pretrained or False
    try:
        model = fbnet_zoo.build_model(args.arch, num_classes=args.num_classes, pretrained=pretrained).eval()
        name = fbnet_zoo.normalize_name(model.spec.name)
        # the size (--input-size or the spec's own) in range and large enough for every stage of this arch
        fbnet_zoo.count_flops(model.spec, input_size=args.input_size, num_classes=0)
        if args.format == "int8":
            return _export_int8(model, name, args)
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
    except FBNetZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _export_int8(model, name, args):
    is_dir = os.path.isdir(args.out) or args.out.endswith(os.sep)
    path = output_file(args.out, name + "_int8", ".ts", what="arch name") if is_dir else args.out
    size = model.spec.input_size if args.input_size is None else args.input_size
    try:
        calib, held = calibration_images(args.calibration, args.calibration_images, size, args.seed)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    batches = [calib[i:i + 8] for i in range(0, len(calib), 8)]
    try:
        q = quantize_static(model, batches, backend=args.backend, reduce_range=args.bit_split,
                            keep_float=[n for n in args.keep_float.split(",") if n])
        ts = export_int8_torchscript(q, path, example=held[:1])
    except (DeployError, UnsafeNameError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    agree, n = top1_agreement(model, ts, [held[i:i + 16] for i in range(0, len(held), 16)])
    kind = "generated" if args.calibration is None else "held-out"
    print(f"int8: {path} (top-1 agreement with fp32 on {n} {kind} images: {agree:.1%})")
    return 0


def _export_detector(args):
    try:
        from fbnet_zoo.detection.d2.export import detector_images, export_detector, load_detector
    except ImportError as e:
        print(f"error: --detector needs detectron2: {e}", file=sys.stderr)
        return 1
    if args.format not in ("torchscript", "int8"):
        print(f"error: --format {args.format}: a detector exports as torchscript or int8", file=sys.stderr)
        return 1
    if not args.calibration:  # checked before the detector is built
        print("error: --calibration DIR is required with --detector (image files to trace and calibrate on)",
              file=sys.stderr)
        return 1
    try:
        cfg, model = load_detector(args.detector, args.weights or "", args.opts)
        stem = os.path.splitext(os.path.basename(args.detector))[0] if args.detector.endswith((".yaml", ".yml")) \
            else args.detector.replace(":", "_")
        is_dir = os.path.isdir(args.out) or args.out.endswith(os.sep)
        suffix = "_int8" if args.format == "int8" else ""
        path = output_file(args.out, stem + suffix, ".ts", what="detector name") if is_dir else args.out
        images = detector_images(cfg, args.calibration, args.calibration_images, args.seed)
        info = export_detector(cfg, model, path, args.format, images, backend=args.backend,
                               reduce_range=args.bit_split)
    except (FBNetZooError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    parts = f", int8 parts: {', '.join(info['int8_parts'])}" if "int8_parts" in info else ""
    print(f"{args.format}: {path} (traced at {info['image_size'][0]}x{info['image_size'][1]}, "
          f"RPN pre-NMS top-k {info['pre_nms_topk']}{parts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
