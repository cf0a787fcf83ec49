"""detectron2 adapters. Importing this module registers, in detectron2's registries:
BACKBONE_REGISTRY ``FBNetC4Backbone`` / ``FBNetFPNBackbone``, RPN_HEAD_REGISTRY
``FBNetRPNHead``, ROI_BOX_HEAD_REGISTRY ``FBNetBoxHead``, ROI_MASK_HEAD_REGISTRY
``FBNetMaskHead``, ROI_KEYPOINT_HEAD_REGISTRY ``FBNetKeypointHead``. Needs detectron2 (built from its official repository)."""

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("fbnet_zoo.detection.d2 needs detectron2, which is not on PyPI; install it from "
                      "https://github.com/facebookresearch/detectron2 (see README: Detection)") from e

from ..convert import load_d2go_weights
from .backbone import FBNetBackbone, FBNetC4Backbone, FBNetFPNBackbone, build_backbone, fpn_backbone
from .config import add_fbnet_config, d2go_config, d2go_config_path
from .data import check_datasets, register_coco_dataset
from .heads import FBNetBoxHead, FBNetKeypointHead, FBNetMaskHead, FBNetRPNHead
from .model import build_d2go_detector, load_configured_weights

__all__ = ["FBNetBackbone", "FBNetBoxHead", "FBNetC4Backbone", "FBNetFPNBackbone", "FBNetKeypointHead", "FBNetMaskHead",
           "FBNetRPNHead", "add_fbnet_config", "build_backbone", "check_datasets", "build_d2go_detector", "d2go_config",
           "d2go_config_path", "fpn_backbone", "load_configured_weights", "load_d2go_weights",
           "register_coco_dataset"]
