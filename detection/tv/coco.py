"""COCO-format data for the torchvision detectors: a validated data set, a train loop and
pycocotools evaluation.

``CocoDetection`` checks the annotation file before anything trains: bad JSON, missing keys,
wrong types, unknown image / category references, duplicate ids and boxes that are not
finite or have no positive width and height are a DetectionError naming the file, the
image id / annotation id and the field.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..core import DetectionError

__all__ = ["CocoDetection", "collate", "evaluate_coco", "load_coco_annotations", "train_steps"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_records(path: str, data: Mapping[str, Any], key: str, fields: Mapping[str, Any]) -> Dict[int, Mapping]:
    """Records of ``data[key]`` by id; ``fields``: name -> (check, what is allowed)."""
    records = data.get(key)
    if not isinstance(records, list):
        raise DetectionError(f"{path}: {key}: {type(records).__name__} is not a list"
                             if key in data else f"{path}: {key}: missing (a COCO instances file has images, "
                             "annotations and categories)")
    by_id: Dict[int, Mapping] = {}
    for n, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise DetectionError(f"{path}: {key}[{n}]: {type(rec).__name__} is not an object")
        rid = rec.get("id")
        where = f"{key}[{n}] (id {rid!r})" if "id" in rec else f"{key}[{n}]"
        for field, (check, allowed) in fields.items():
            if field not in rec:
                raise DetectionError(f"{path}: {where}.{field}: missing")
            if not check(rec[field]):
                raise DetectionError(f"{path}: {where}.{field}: {rec[field]!r} is not {allowed}")
        if rid in by_id:
            raise DetectionError(f"{path}: {where}.id: {rid!r} is used twice in {key}")
        by_id[rid] = rec
    return by_id


def _check_bbox(path: str, where: str, bbox: Any) -> None:
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise DetectionError(f"{path}: {where}.bbox: {bbox!r} is not [x, y, width, height] (4 numbers)")
    if not all(math.isfinite(v) for v in bbox):
        raise DetectionError(f"{path}: {where}.bbox: {bbox!r} is not finite")
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        raise DetectionError(f"{path}: {where}.bbox: {bbox!r} has no positive width and height")
    if x < 0 or y < 0:
        raise DetectionError(f"{path}: {where}.bbox: {bbox!r} starts outside the image (x, y >= 0)")


def load_coco_annotations(path: str) -> Dict[str, Any]:
    """Read and check a COCO instances file (see the module docstring); returns its dict."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DetectionError(f"{path}: no such annotation file") from None
    except UnicodeDecodeError as e:
        raise DetectionError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DetectionError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise DetectionError(f"{path}: the top level is a {type(data).__name__}, not an object with images, "
                             "annotations and categories")
    positive = (lambda v: _is_int(v) and v > 0, "a positive integer")
    images = _check_records(path, data, "images", {"id": (_is_int, "an integer"),
                                                   "file_name": (lambda v: isinstance(v, str) and v != "",
                                                                 "a file name"),
                                                   "height": positive, "width": positive})
    categories = _check_records(path, data, "categories", {"id": (_is_int, "an integer"),
                                                           "name": (lambda v: isinstance(v, str), "a string")})
    annotations = _check_records(path, data, "annotations", {
        "id": (_is_int, "an integer"), "image_id": (_is_int, "an integer"),
        "category_id": (_is_int, "an integer"), "bbox": (lambda v: True, "")})
    for n, ann in enumerate(data["annotations"]):
        where = f"annotations[{n}] (id {ann['id']}, image_id {ann['image_id']})"
        if ann["image_id"] not in images:
            raise DetectionError(f"{path}: {where}.image_id: {ann['image_id']} is not the id of an image")
        if ann["category_id"] not in categories:
            raise DetectionError(f"{path}: {where}.category_id: {ann['category_id']} is not one of the categories "
                                 f"{sorted(categories)}")
        _check_bbox(path, where, ann["bbox"])
        if ann.get("iscrowd", 0) not in (0, 1):
            raise DetectionError(f"{path}: {where}.iscrowd: {ann['iscrowd']!r} is not 0 or 1")
        if "area" in ann and not (_is_number(ann["area"]) and math.isfinite(ann["area"]) and ann["area"] >= 0):
            raise DetectionError(f"{path}: {where}.area: {ann['area']!r} is not a finite number >= 0")
        seg = ann.get("segmentation")
        if seg is not None and not isinstance(seg, (list, dict)):
            raise DetectionError(f"{path}: {where}.segmentation: {type(seg).__name__} is not polygons (list) or RLE")
    return data


class CocoDetection(torch.utils.data.Dataset):
    """COCO instances as torchvision detection targets (boxes xyxy, labels 1..K, masks).
    ``json_path``: a COCO instances file (checked by ``load_coco_annotations``) or a
    pycocotools COCO object."""

    def __init__(self, json_path: Union[str, os.PathLike, Any], image_root: str, masks: bool = False):
        from pycocotools.coco import COCO

        if isinstance(json_path, (str, os.PathLike)):
            coco = COCO()
            coco.dataset = load_coco_annotations(os.fspath(json_path))
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                coco.createIndex()
            self.coco = coco
        else:
            self.coco = json_path
        if not os.path.isdir(image_root):  # else every image fails to read, one at a time, inside the loader
            raise DetectionError(f"image_root {image_root}: no such folder; expected the folder of the images the "
                                 "annotation file lists (their file_name relative to it), e.g. coco/val2017")
        self.image_root = image_root
        self.masks = masks
        self.ids = sorted(self.coco.getImgIds())
        self.cat_ids = sorted(self.coco.getCatIds())
        self.label_of = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.cat_of = {v: k for k, v in self.label_of.items()}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        from PIL import Image

        img_id = self.ids[i]
        info = self.coco.loadImgs(img_id)[0]
        path = os.path.join(self.image_root, info["file_name"])
        try:
            with Image.open(path) as im:
                image = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
        except (OSError, ValueError) as e:
            raise DetectionError(f"image_id {img_id}: {path}: cannot be read as an image ({e})") from None
        anns = [a for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=img_id)) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        target = {"boxes": boxes, "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns],
                                                         dtype=torch.int64),
                  "image_id": torch.tensor(img_id)}
        if self.masks:
            target["masks"] = torch.stack([torch.from_numpy(self.coco.annToMask(a)) for a in anns]) if anns \
                else torch.zeros((0, info["height"], info["width"]), dtype=torch.uint8)
        return image.float() / 255.0, target


def collate(batch: List[Tuple[torch.Tensor, Dict[str, torch.Tensor]]]):
    return tuple(zip(*batch))


def train_steps(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, steps: int,
                progress: bool = False) -> List[float]:
    """Run ``steps`` optimisation steps (cycling the loader); returns the total loss per step."""
    from tqdm import tqdm

    model.train()
    losses: List[float] = []
    it = iter(loader)
    for _ in tqdm(range(steps), disable=not progress, desc="train"):
        try:
            images, targets = next(it)
        except StopIteration:
            it = iter(loader)
            images, targets = next(it)
        loss_dict = model(list(images), list(targets))
        loss = sum(loss_dict.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} ({ {k: float(v) for k, v in loss_dict.items()} })")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def evaluate_coco(model: nn.Module, dataset: CocoDetection, batch_size: int = 4,
                  iou_types: Sequence[str] = ("bbox",)) -> Dict[str, Dict[str, float]]:
    """Run the model over the data set and score it with pycocotools' COCOeval.
    Returns {iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl"}} in percent."""
    from pycocotools import mask as mask_util
    from pycocotools.cocoeval import COCOeval

    model.eval()
    results: List[Dict[str, Any]] = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        outputs = model([im for im, _ in items])
        for (_, target), out in zip(items, outputs):
            img_id = int(target["image_id"])
            boxes = out["boxes"].tolist()
            for k, (box, score, label) in enumerate(zip(boxes, out["scores"].tolist(), out["labels"].tolist())):
                r = {"image_id": img_id, "category_id": dataset.cat_of[int(label)],
                     "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": float(score)}
                if "masks" in out:
                    m = (out["masks"][k, 0] > 0.5).numpy().astype(np.uint8)
                    rle = mask_util.encode(np.asfortranarray(m))
                    rle["counts"] = rle["counts"].decode("ascii")
                    r["segmentation"] = rle
                results.append(r)
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    metrics: Dict[str, Dict[str, float]] = {}
    for iou_type in iou_types:
        if not results:
            metrics[iou_type] = {n: 0.0 for n in names}
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            dt = dataset.coco.loadRes([dict(r) for r in results])
            ev = COCOeval(dataset.coco, dt, iou_type)
            ev.evaluate(); ev.accumulate(); ev.summarize()
        metrics[iou_type] = {n: float(max(v, 0.0)) * 100 for n, v in zip(names, ev.stats[:6])}
    return metrics
