#!/usr/bin/env python3
"""Convert checkpoint key names between timm / mobile_cv (the authors' names) and ours.

    python tools/convert_checkpoint.py --from timm --to ours --arch FBNetV3-B-timm \
        fbnetv3_b_224-ead5d2a1.pth fbnetv3_b_timm_ours.pth
    python tools/convert_checkpoint.py --from mobile_cv --to ours --arch FBNetV3-A in.pth out.pth
    python tools/convert_checkpoint.py --from ours --to mobile_cv --arch FBNetV3-A ours.pth mc.pth

INPUT may be a local path or a URL (fetched into the cache, verified, read with
weights_only=True). The converted state dict is loaded strictly into --arch as a check
(skip with --no-check) and written atomically (.safetensors output if the name says so).
"""

import argparse
import io
import logging
import sys

import torch

import fbnet_zoo
from fbnet_zoo.checkpoints import load_checkpoint, load_state_dict_checked
from fbnet_zoo.converters import convert_to_ours, ours_to_mobile_cv
from fbnet_zoo.errors import FBNetZooError
from fbnet_zoo.io_utils import atomic_write_bytes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="checkpoint path or URL")
    p.add_argument("output", help="where to write the converted state dict (.pth or .safetensors)")
    p.add_argument("--from", dest="src", default="auto", choices=["auto", "ours", "timm", "mobile_cv"])
    p.add_argument("--to", dest="dst", default="ours", choices=["ours", "mobile_cv"])
    p.add_argument("--arch", required=True, help="zoo name or arch YAML the weights belong to")
    p.add_argument("--sha256", help="expected sha256 of INPUT")
    p.add_argument("--no-check", action="store_true", help="do not load the result into --arch to check it")
    p.add_argument("--allow-bad-values", action="store_true",
                   help="convert even with NaN/inf weights, negative BN variances or integer weights")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        sd, _, path = load_checkpoint(args.input, None, sha256=args.sha256)
        spec = fbnet_zoo.load_spec(args.arch)
        ours = convert_to_ours(sd, spec, args.src)
        w = ours.get("classifier.fc.weight")
        num_classes = int(w.shape[0]) if w is not None else 0
        if not args.no_check:
            model = fbnet_zoo.FBNet(spec, num_classes=num_classes)
            load_state_dict_checked(model, ours, strict=True, where=path, check_values=not args.allow_bad_values)
        out = ours if args.dst == "ours" else ours_to_mobile_cv(ours, spec)
        if args.output.endswith(".safetensors"):
            from safetensors.torch import save

            data = save({k: v.contiguous() for k, v in out.items()})
        else:
            buf = io.BytesIO()
            torch.save(dict(out), buf)
            data = buf.getvalue()
        atomic_write_bytes(args.output, data)
    except FBNetZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # OUTPUT cannot be written: a folder, no permission, a full disk
        print(f"error: {args.output}: cannot be written ({e.strerror or e})", file=sys.stderr)
        return 1
    print(f"{path} ({args.src} -> {args.dst}, {len(out)} tensors, {num_classes} classes) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
