"""A small synthetic COCO-format data set: images of coloured shapes on noise, with boxes,
polygons, categories and semantic masks. For tests and smoke runs (tools/make_toy_coco.py).

Layout written under ``root``::

    images/000000.png ...          RGB images
    sem_seg/000000.png ...         semantic masks (0 = background, k = category k, 255 = ignore none)
    annotations.json               COCO instances (bbox xywh, polygon segmentation, area, iscrowd)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from typing import Dict, Iterator, List, Tuple

import numpy as np

from fbnet_zoo.errors import DetectionError, check_int

CATEGORIES = [
    {"id": 1, "name": "square", "supercategory": "shape"},
    {"id": 2, "name": "disc", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
]
_COLOURS = {1: (230, 40, 40), 2: (40, 200, 60), 3: (50, 80, 230)}


def _polygon(cat: int, x0: float, y0: float, w: float, h: float) -> List[float]:
    if cat == 1:
        pts = [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    elif cat == 2:
        t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        pts = list(zip(x0 + w / 2 + w / 2 * np.cos(t), y0 + h / 2 + h / 2 * np.sin(t)))
    else:
        pts = [(x0 + w / 2, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    return [round(float(v), 2) for p in pts for v in p]


@contextlib.contextmanager
def _new_set(root: str, overwrite: bool, entries: Tuple[str, ...]) -> Iterator[str]:
    """A folder to write a toy set into, published at ``root`` only when complete (a crash
    leaves no half set there). A ``root`` that holds anything is refused unless ``overwrite``:
    then only the set's own ``entries`` are replaced, other files stay."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise DetectionError(f"toy COCO root {root!r} is a file, not a folder")
    held = sorted(os.listdir(root)) if os.path.isdir(root) else []
    if held and not overwrite:
        shown = ", ".join(held[:5]) + (f", ... ({len(held)} entries)" if len(held) > 5 else "")
        raise DetectionError(f"toy COCO root {root!r} is not empty ({shown}): refusing to write into it; give a new "
                             f"or empty folder, or overwrite=True (tools/make_toy_coco.py --overwrite) to replace "
                             f"its {', '.join(entries)}")
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    # not mkdtemp: this folder becomes root, so it takes the umask's mode (mkdtemp's is 0700)
    tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(root))}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.mkdir(tmp)
    try:
        yield tmp
        if not held:
            os.replace(tmp, root)  # (an empty folder at root is replaced too)
            return
        for name in entries:  # overwrite: the set's own entries, one by one
            new, old = os.path.join(tmp, name), os.path.join(root, name)
            if os.path.isdir(old) and not os.path.islink(old):
                stale = tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=root)
                os.replace(old, os.path.join(stale, name))
                os.replace(new, old)
                shutil.rmtree(stale)
            else:
                os.replace(new, old)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def make_toy_coco(root: str, num_images: int = 16, image_size: Tuple[int, int] = (128, 128),
                  max_objects: int = 3, seed: int = 0, overwrite: bool = False) -> Dict[str, str]:
    """Write the data set; returns {"json": ..., "images": ..., "sem_seg": ...} paths. ``root``
    must be new or empty unless ``overwrite`` (then its images/, sem_seg/ and annotations.json
    are replaced); the set appears there complete or not at all."""
    h, w = image_size
    # checked before anything is written: bad values were numpy tracebacks or an empty set
    check_int("num_images", num_images, 1, 100_000, error=DetectionError)
    check_int("image_size[0]", h, 8, 8192, error=DetectionError)
    check_int("image_size[1]", w, 8, 8192, error=DetectionError)
    check_int("max_objects", max_objects, 1, 100, error=DetectionError)
    with _new_set(root, overwrite, ("images", "sem_seg", "annotations.json")) as out:
        _write_toy_coco(out, num_images, h, w, max_objects, seed)
    return {"json": os.path.join(root, "annotations.json"), "images": os.path.join(root, "images"),
            "sem_seg": os.path.join(root, "sem_seg")}


def _write_toy_coco(root: str, num_images: int, h: int, w: int, max_objects: int, seed: int) -> None:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img_dir, sem_dir = os.path.join(root, "images"), os.path.join(root, "sem_seg")
    os.makedirs(img_dir)
    os.makedirs(sem_dir)
    images, annotations = [], []
    ann_id = 1
    for i in range(num_images):
        base = rng.integers(60, 140, size=(h, w, 3), dtype=np.uint8)
        img = Image.fromarray(base, "RGB")
        sem = Image.new("L", (w, h), 0)
        draw, sem_draw = ImageDraw.Draw(img), ImageDraw.Draw(sem)
        for _ in range(int(rng.integers(1, max_objects + 1))):
            cat = int(rng.integers(1, len(CATEGORIES) + 1))
            bw, bh = float(rng.uniform(0.2, 0.45) * w), float(rng.uniform(0.2, 0.45) * h)
            x0, y0 = float(rng.uniform(0, w - bw - 1)), float(rng.uniform(0, h - bh - 1))
            poly = _polygon(cat, x0, y0, bw, bh)
            xy = list(zip(poly[::2], poly[1::2]))
            draw.polygon(xy, fill=_COLOURS[cat])
            sem_draw.polygon(xy, fill=cat)
            xs, ys = poly[::2], poly[1::2]
            bx, by = min(xs), min(ys)
            box = [round(bx, 2), round(by, 2), round(max(xs) - bx, 2), round(max(ys) - by, 2)]
            area = 0.5 * abs(sum(xs[j] * ys[j - 1] - xs[j - 1] * ys[j] for j in range(len(xs))))
            annotations.append({"id": ann_id, "image_id": i + 1, "category_id": cat, "bbox": box,
                                "segmentation": [poly], "area": round(area, 2), "iscrowd": 0})
            ann_id += 1
        name = f"{i:06d}.png"
        img.save(os.path.join(img_dir, name))
        sem.save(os.path.join(sem_dir, name))
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    data = {"info": {"description": "fbnet_zoo toy COCO"}, "images": images, "annotations": annotations,
            "categories": CATEGORIES, "licenses": []}
    with open(os.path.join(root, "annotations.json"), "w", encoding="utf-8") as f:
        json.dump(data, f)


# COCO's 17 person keypoints, in COCO's order; left/right pairs swap under a horizontal flip.
KEYPOINT_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle")
# Where each keypoint sits in a figure's box (x, y in [0, 1]): a stick figure facing the viewer,
# so the person's left is the image's right.
_KEYPOINT_LAYOUT = ((0.5, 0.08), (0.56, 0.05), (0.44, 0.05), (0.62, 0.08), (0.38, 0.08), (0.7, 0.25),
                    (0.3, 0.25), (0.8, 0.42), (0.2, 0.42), (0.88, 0.58), (0.12, 0.58), (0.62, 0.58),
                    (0.38, 0.58), (0.64, 0.78), (0.36, 0.78), (0.66, 0.97), (0.34, 0.97))
_SKELETON = ((16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
             (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7))


def make_toy_keypoint_coco(root: str, num_images: int = 8, image_size: Tuple[int, int] = (128, 128),
                           max_objects: int = 2, seed: int = 0, overwrite: bool = False) -> Dict[str, str]:
    """A COCO person-keypoints set: stick figures (limbs drawn between COCO's 17 keypoints, each
    keypoint a bright dot) on noise, one category ``person`` with ``keypoints`` and ``skeleton``.
    Each annotation has its box, a polygon (the figure's box), 17 (x, y, v=2) keypoints and
    ``num_keypoints``. Writes ``images/`` and ``annotations.json``; returns {"json", "images"}.
    ``root``: new or empty unless ``overwrite``, as in ``make_toy_coco``."""
    with _new_set(root, overwrite, ("images", "annotations.json")) as out:
        _write_toy_keypoint_coco(out, num_images, image_size, max_objects, seed)
    return {"json": os.path.join(root, "annotations.json"), "images": os.path.join(root, "images")}


def _write_toy_keypoint_coco(root: str, num_images: int, image_size: Tuple[int, int], max_objects: int,
                             seed: int) -> None:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    h, w = image_size
    img_dir = os.path.join(root, "images")
    os.makedirs(img_dir)
    images, annotations = [], []
    ann_id = 1
    for i in range(num_images):
        img = Image.fromarray(rng.integers(40, 120, size=(h, w, 3), dtype=np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, max_objects + 1))):
            bw, bh = float(rng.uniform(0.25, 0.45) * w), float(rng.uniform(0.45, 0.8) * h)
            x0, y0 = float(rng.uniform(0, w - bw - 1)), float(rng.uniform(0, h - bh - 1))
            jitter = rng.uniform(-0.03, 0.03, size=(len(_KEYPOINT_LAYOUT), 2))
            pts = [(x0 + (px + jx) * bw, y0 + (py + jy) * bh) for (px, py), (jx, jy) in zip(_KEYPOINT_LAYOUT, jitter)]
            pts = [(min(max(x, x0), x0 + bw), min(max(y, y0), y0 + bh)) for x, y in pts]
            for a, b in _SKELETON:
                draw.line([pts[a - 1], pts[b - 1]], fill=(220, 220, 60), width=2)
            for k, (x, y) in enumerate(pts):
                r = 2
                draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 40 + 12 * k, 40))
            kps = [v for x, y in pts for v in (round(x, 2), round(y, 2), 2)]
            box = [round(x0, 2), round(y0, 2), round(bw, 2), round(bh, 2)]
            poly = [x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh]
            annotations.append({"id": ann_id, "image_id": i + 1, "category_id": 1, "bbox": box,
                                "segmentation": [[round(v, 2) for v in poly]], "area": round(bw * bh, 2),
                                "iscrowd": 0, "keypoints": kps, "num_keypoints": len(pts)})
            ann_id += 1
        name = f"{i:06d}.png"
        img.save(os.path.join(img_dir, name))
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    categories = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(KEYPOINT_NAMES),
                   "skeleton": [list(s) for s in _SKELETON]}]
    data = {"info": {"description": "fbnet_zoo toy COCO person keypoints"}, "images": images,
            "annotations": annotations, "categories": categories, "licenses": []}
    with open(os.path.join(root, "annotations.json"), "w", encoding="utf-8") as f:
        json.dump(data, f)
