# Mask R-CNN FPN on an FBNet trunk (LazyConfig): faster_rcnn_fbnet_fpn.py + the FBNet mask head
# on 14x14 RoIs of p2..p5. Same model as ../mask_rcnn_fbnetv3g_fpn.yaml.
from detectron2.config import LazyCall as L
from detectron2.modeling.poolers import ROIPooler

from fbnet_zoo.detection.d2 import lazy as fb

from .faster_rcnn_fbnet_fpn import dataloader, fbnet, lr_multiplier, model, optimizer, train  # noqa: F401

model.roi_heads.mask_in_features = ["p2", "p3", "p4", "p5"]
model.roi_heads.mask_pooler = L(ROIPooler)(output_size=14, scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32),
                                           sampling_ratio=0, pooler_type="ROIAlignV2")
model.roi_heads.mask_head = L(fb.mask_head)(
    arch="${fbnet.arch}", variant="fpn", in_channels="${fbnet.fpn_channels}", num_classes="${..num_classes}",
    pooler_resolution=14, norm="${fbnet.head_norm}")
dataloader.train.mapper.use_instance_mask = True
