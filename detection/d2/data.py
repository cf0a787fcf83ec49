"""Register COCO-format data (e.g. the toy set of tools/make_toy_coco.py) with detectron2."""

from __future__ import annotations

import json
import os
from typing import Dict, Iterable, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg, register_coco_instances

from fbnet_zoo.errors import DetectionError

# What detectron2's built-in COCO names read (detectron2/data/datasets/builtin.py).
COCO_LAYOUT = ("$DETECTRON2_DATASETS (default: ./datasets) holding coco/annotations/instances_{train,val}2017.json "
               "and the image folders coco/train2017/, coco/val2017/ (detectron2's datasets/README.md)")


def register_coco_dataset(name: str, json_file: str, image_root: str,
                          sem_seg_root: Optional[str] = None) -> Dict[str, str]:
    """Register ``name`` (instances, COCO evaluator) and, with ``sem_seg_root``,
    ``name + "_sem_seg"`` (semantic masks: 0 background, k = k-th category, 255 ignore).
    A file whose category has COCO ``keypoints`` names also gets the keypoint metadata
    (names, left/right flip map, OKS sigmas) that Keypoint R-CNN training and evaluation read.
    Already-registered names are left as they are. Returns the registered names."""
    _check_paths(name, json_file, image_root, sem_seg_root)
    out = {"instances": name}
    if name not in DatasetCatalog.list():
        register_coco_instances(name, _keypoint_metadata(json_file), json_file, image_root)
    if sem_seg_root is not None:
        sem = name + "_sem_seg"
        out["sem_seg"] = sem
        if sem not in DatasetCatalog.list():
            with open(json_file, encoding="utf-8") as f:
                cats = sorted(json.load(f)["categories"], key=lambda c: c["id"])
            DatasetCatalog.register(sem, lambda: load_sem_seg(sem_seg_root, image_root, "png", "png"))
            MetadataCatalog.get(sem).set(stuff_classes=["background"] + [c["name"] for c in cats],
                                         ignore_label=255, evaluator_type="sem_seg",
                                         image_root=image_root, sem_seg_root=sem_seg_root)
    return out


def check_datasets(names: Iterable[str], option: str) -> None:
    """Each data set named in ``option`` (``DATASETS.TEST``) is registered and its files exist:
    a DetectionError naming the missing path and the expected layout, before a model is built
    (detectron2 reads them when the loader is built, and fails with pycocotools' traceback)."""
    for name in names:
        if name not in DatasetCatalog.list():
            coco = sorted(n for n in DatasetCatalog.list() if n.startswith("coco_2017"))
            raise DetectionError(f"{option}: {name!r} is not a registered data set (detectron2's built-in names, e.g. "
                                 f"{', '.join(coco[:4])}; or register one with fbnet_zoo.detection.d2."
                                 "register_coco_dataset; tools/train_net.py --toy-coco DIR registers a toy set)")
        meta = MetadataCatalog.get(name)
        _check_paths(name, meta.get("json_file", None), meta.get("image_root", None), meta.get("sem_seg_root", None),
                     option)


def _check_paths(name: str, json_file: Optional[str], image_root: Optional[str], sem_seg_root: Optional[str],
                 option: str = "") -> None:
    for what, path, exists in (("annotation file", json_file, os.path.isfile), ("image folder", image_root, os.path.isdir),
                               ("semantic mask folder", sem_seg_root, os.path.isdir)):
        if path and "://" not in path and not exists(path):
            builtin = name.startswith(("coco_", "keypoints_coco_"))
            expected = COCO_LAYOUT if builtin else ("a COCO instances JSON file and the folder of the images it "
                                                    "lists (file_name relative to it)")
            raise DetectionError(f"{option + ': ' if option else ''}data set {name!r}: {what} {path} does not exist; "
                                 f"expected {expected}")


# COCO's per-keypoint OKS sigmas (cocoapi), for files whose keypoints are COCO's 17 by name.
_COCO_OKS_SIGMAS = (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
                    0.087, 0.087, 0.089, 0.089)


def _keypoint_metadata(json_file: str) -> Dict:
    with open(json_file, encoding="utf-8") as f:
        cats = json.load(f).get("categories", [])
    names = next((c["keypoints"] for c in cats if c.get("keypoints")), None)
    if not names:
        return {}
    flip = [(n, "right_" + n[len("left_"):]) for n in names
            if n.startswith("left_") and "right_" + n[len("left_"):] in names]
    meta = {"keypoint_names": list(names), "keypoint_flip_map": flip}
    if len(names) == len(_COCO_OKS_SIGMAS):
        meta["keypoint_oks_sigmas"] = list(_COCO_OKS_SIGMAS)
    return meta
