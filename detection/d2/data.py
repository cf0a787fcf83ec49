"""Register COCO-format data (e.g. the toy set of tools/make_toy_coco.py) with detectron2."""

from __future__ import annotations

import json
from typing import Dict, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg, register_coco_instances


def register_coco_dataset(name: str, json_file: str, image_root: str,
                          sem_seg_root: Optional[str] = None) -> Dict[str, str]:
    """Register ``name`` (instances, COCO evaluator) and, with ``sem_seg_root``,
    ``name + "_sem_seg"`` (semantic masks: 0 background, k = k-th category, 255 ignore).
    A file whose category has COCO ``keypoints`` names also gets the keypoint metadata
    (names, left/right flip map, OKS sigmas) that Keypoint R-CNN training and evaluation read.
    Already-registered names are left as they are. Returns the registered names."""
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
