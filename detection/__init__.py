"""fbnet_zoo.detection: detectron2 and torchvision adapters for FBNet backbones.

* ``fbnet_zoo.detection.d2`` (needs detectron2): importing it registers the FBNet C4 / FPN
  backbones and the RPN / box / mask heads in detectron2's registries; ``add_fbnet_config``.
* ``fbnet_zoo.detection.tv``: Faster R-CNN / Mask R-CNN from torchvision, COCO data, train
  loop and evaluation (needs torchvision; formerly ``fbnet_zoo.detection.torchvision``).
* ``build_backbone("FBNetV3-E", variant="c4"|"fpn")``: a detectron2 ``Backbone`` in Python.

Importing this package registers the authors' detection variants (FBNetV3-A/E/G-d2go) as zoo
specs and needs only torch.
"""

from .core import (DetectionArch, DetectionError, c4_split, check_fpn_features, feature_layout,
                   register_d2go_archs, resolve_arch)

from .convert import load_d2go_weights  # registers the "d2go_detection" checkpoint converter

register_d2go_archs()


def build_backbone(arch="FBNetV3-A", variant="c4", **kwargs):
    """A detectron2 Backbone (needs detectron2): see ``fbnet_zoo.detection.d2.build_backbone``."""
    from .d2.backbone import build_backbone as _build

    return _build(arch, variant=variant, **kwargs)


__all__ = ["DetectionArch", "DetectionError", "build_backbone", "c4_split", "check_fpn_features",
           "feature_layout", "load_d2go_weights", "register_d2go_archs", "resolve_arch"]
