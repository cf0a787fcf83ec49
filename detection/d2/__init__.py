"""detectron2 adapters. Importing this module registers, in detectron2's registries:
BACKBONE_REGISTRY ``FBNetC4Backbone`` / ``FBNetFPNBackbone``, RPN_HEAD_REGISTRY
``FBNetRPNHead``, ROI_BOX_HEAD_REGISTRY ``FBNetBoxHead``, ROI_MASK_HEAD_REGISTRY
``FBNetMaskHead``. Needs detectron2 (built from its official repository)."""

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("fbnet_zoo.detection.d2 needs detectron2, which is not on PyPI; install it from "
                      "https://github.com/facebookresearch/detectron2 (see README: Detection)") from e

from .backbone import FBNetBackbone, FBNetC4Backbone, FBNetFPNBackbone, build_backbone, fpn_backbone
from .config import add_fbnet_config
from .data import register_coco_dataset
from .heads import FBNetBoxHead, FBNetMaskHead, FBNetRPNHead

__all__ = ["FBNetBackbone", "FBNetBoxHead", "FBNetC4Backbone", "FBNetFPNBackbone", "FBNetMaskHead",
           "FBNetRPNHead", "add_fbnet_config", "build_backbone", "fpn_backbone", "register_coco_dataset"]
