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
    Already-registered names are left as they are. Returns the registered names."""
    out = {"instances": name}
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, json_file, image_root)
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
