"""Faster R-CNN / Mask R-CNN from torchvision on FBNet trunks (``models``), COCO-format data,
a train loop and pycocotools evaluation (``coco``), input checks (``checks``)."""

from .checks import check_images, check_targets
from .coco import CocoDetection, collate, evaluate_coco, load_coco_annotations, train_steps
from .models import FBNetFasterRCNN, FBNetMaskRCNN, fasterrcnn_fbnet, maskrcnn_fbnet

__all__ = ["CocoDetection", "FBNetFasterRCNN", "FBNetMaskRCNN", "check_images", "check_targets", "collate",
           "evaluate_coco", "fasterrcnn_fbnet", "load_coco_annotations", "maskrcnn_fbnet", "train_steps"]
