#!/usr/bin/env python3
"""Table of registered models: input size, params and FLOPs in both counting conventions
(fvcore's, the default everywhere, and the FBNetV3 paper's: the authors' counter), features
(res{k}: stride, channels).

    python tools/model_info.py                       # every registered model
    python tools/model_info.py --arch my_arch.yaml   # one spec
    python tools/model_info.py --input-size 224 --num-classes 10 --models fbnetv3_a fbnetv3_e
    python tools/model_info.py --verify              # also trace with fvcore and check equality
"""

import argparse
import json
import sys

import fbnet_zoo


def describe(spec, input_size, num_classes, verify):
    c = fbnet_zoo.complexity(spec, input_size, num_classes)
    paper = fbnet_zoo.complexity(spec, input_size, num_classes, convention="paper")
    row = {
        "name": spec.name,
        "input_size": c.input_size[0] if c.input_size[0] == c.input_size[1] else list(c.input_size),
        "params": c.params,
        "flops": c.flops,
        "paper_params": paper.params,
        "paper_flops": paper.flops,
        "features": {f.name: {"stride": f.stride, "channels": f.channels, "stage": f.stage}
                     for f in spec.features()},
    }
    if verify:
        model = fbnet_zoo.FBNet(spec, num_classes=num_classes)
        row["fvcore_flops"] = fbnet_zoo.fvcore_flops(model, input_size=c.input_size)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", action="append", default=[], help="arch YAML path (repeatable)")
    p.add_argument("--models", nargs="*", default=None, help="zoo names (default: all registered)")
    p.add_argument("--input-size", type=int, default=None, help="square input size (default: each spec's own)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--verify", action="store_true", help="also count with fvcore tracing and compare")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    try:
        if args.arch:
            specs = [fbnet_zoo.load_spec(a) for a in args.arch]
        else:
            specs = [fbnet_zoo.get_spec(n) for n in (args.models or fbnet_zoo.list_models())]
        rows = [describe(s, args.input_size, args.num_classes, args.verify) for s in specs]
    except fbnet_zoo.FBNetZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = (f"{'model':<22} {'input':>7} {'params (M)':>11} {'MFLOPs':>9} {'paper params':>13} "
              f"{'paper MFLOPs':>13}  features (stride:channels)")
    print(header)
    print("-" * len(header))
    for r in rows:
        stages = " ".join(f"{v['stride']}:{v['channels']}" for v in r["features"].values())
        check = ""
        if "fvcore_flops" in r:
            check = "  fvcore ok" if r["fvcore_flops"] == r["flops"] else f"  fvcore {r['fvcore_flops']} MISMATCH"
        print(f"{r['name']:<22} {str(r['input_size']):>7} {r['params'] / 1e6:>11.3f} {r['flops'] / 1e6:>9.1f} "
              f"{r['paper_params'] / 1e6:>13.3f} {r['paper_flops'] / 1e6:>13.1f}  {stages}{check}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
