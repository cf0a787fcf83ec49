#!/usr/bin/env python3
"""Measure FBNetV3-A...G with the authors' own counter and write the reference the tests pin.

The FBNetV3 paper's FLOPs come from the authors' counter in mobile-vision
(``mobile_cv.lut.lib.pt.flops_utils.FlopsEstimation``). This tool builds the authors' own
models (``mobile_cv.model_zoo.models.fbnet_v2.fbnet("FBNetV3_X")``, random weights), runs
that counter at each model's native input size and at a few odd sizes, and writes what it
measured (exact integers) to ``tests/data/paper_counts_reference.json``. Tests compare
``fbnet_zoo.count_flops(..., convention="paper")`` against that file without mobile_cv.

Needs mobile_cv installed (not a dependency of fbnet_zoo), e.g. into a private venv:
    .venv/bin/pip install --no-deps --no-build-isolation <mobile-vision checkout>
    .venv/bin/python tools/authors_counter.py [--out tests/data/paper_counts_reference.json]
"""

import argparse
import json
import os
import sys

MODELS = ["FBNetV3-A", "FBNetV3-B", "FBNetV3-C", "FBNetV3-D", "FBNetV3-E", "FBNetV3-F", "FBNetV3-G"]
# Odd and non-square sizes exercise every padding/rounding path of the strided blocks.
EXTRA_SIZES = [(97, 97), (161, 161), (225, 225), (263, 263), (331, 331), (200, 263)]
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "tests", "data", "paper_counts_reference.json")


def authors_counts(model, size):
    """(params, flops) of ``model`` on one 3 x h x w image, by the authors' counter, as integers."""
    import torch
    from mobile_cv.lut.lib.pt import flops_utils

    h, w = size
    model.eval()
    estimation = flops_utils.FlopsEstimation(model)
    with estimation.enable(), torch.no_grad():
        model(torch.zeros(1, 3, h, w))
        params, flops = estimation.get_flops(unit=1)
    return int(params), int(flops)


def measure(models=MODELS, extra_sizes=EXTRA_SIZES):
    import mobile_cv
    import torch
    from mobile_cv.model_zoo.models.fbnet_v2 import fbnet

    import fbnet_zoo

    torch.manual_seed(0)
    out = {
        "_produced_by": (
            "tools/authors_counter.py: mobile_cv.lut.lib.pt.flops_utils.FlopsEstimation(model)"
            ".get_flops(unit=1) on mobile_cv.model_zoo.models.fbnet_v2.fbnet('FBNetV3_X') (the authors'"
            " own FBNetV3 definitions, random weights, eval mode, 1000 classes, one 1x3xHxW zero image);"
            f" mobile_cv {getattr(mobile_cv, '__version__', '?')} from facebookresearch/mobile-vision,"
            f" torch {torch.__version__}."),
        "models": {},
    }
    for name in models:
        model = fbnet(name.replace("-", "_"), pretrained=False)
        native = fbnet_zoo.get_spec(name).input_size
        rows = []
        for size in [(native, native)] + list(extra_sizes):
            params, flops = authors_counts(model, size)
            rows.append({"input_size": list(size), "flops": flops, "params": params})
        out["models"][name] = {"native_input_size": native, "counts": rows}
    return out


def to_json(data):
    """Indented JSON with each count on one line (a reviewable diff when remeasured)."""
    lines = ["{", f' "_produced_by": {json.dumps(data["_produced_by"])},', ' "models": {']
    names = list(data["models"])
    for i, name in enumerate(names):
        entry = data["models"][name]
        lines.append(f'  {json.dumps(name)}: {{"native_input_size": {entry["native_input_size"]}, "counts": [')
        rows = [f"   {json.dumps(row)}" for row in entry["counts"]]
        lines.append(",\n".join(rows))
        lines.append("  ]}" + ("," if i < len(names) - 1 else ""))
    lines += [" }", "}"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT, help="JSON to write (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        import mobile_cv  # noqa: F401
    except ImportError:
        print("error: mobile_cv is not importable; install mobile-vision first (see --help)", file=sys.stderr)
        return 2
    from fbnet_zoo.io_utils import atomic_write_text

    data = measure()
    atomic_write_text(args.out, to_json(data))
    for name, entry in data["models"].items():
        native = entry["counts"][0]
        print(f"{name}: {native['flops'] / 1e6:.3f} MFLOPs, {native['params'] / 1e6:.3f} M params "
              f"at {entry['native_input_size']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
