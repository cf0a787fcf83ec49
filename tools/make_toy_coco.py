#!/usr/bin/env python
"""Write a small synthetic COCO-format data set (images, boxes, polygons, categories,
semantic masks) for tests and smoke runs.

    python tools/make_toy_coco.py /tmp/toy_coco --num-images 16 --size 128 --seed 0

The output folder must be new or empty (the set appears there complete or not at all);
--overwrite replaces the images/, sem_seg/ and annotations.json of an existing one.
"""

import argparse
import sys

from fbnet_zoo.detection.toy_data import make_toy_coco
from fbnet_zoo.errors import FBNetZooError


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="output directory")
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--size", type=int, nargs="+", default=[128], help="H [W] in pixels")
    p.add_argument("--max-objects", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="write into a folder that is not empty, replacing its images/, sem_seg/, annotations.json")
    a = p.parse_args(argv)
    hw = (a.size[0], a.size[-1])
    try:
        paths = make_toy_coco(a.root, a.num_images, hw, a.max_objects, a.seed, overwrite=a.overwrite)
    except FBNetZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
