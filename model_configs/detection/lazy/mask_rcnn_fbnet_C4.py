# Mask R-CNN C4 on an FBNet trunk (LazyConfig): faster_rcnn_fbnet_C4.py + the FBNet mask head
# on 14x14 RoIs of res4 (28x28 masks). Same model as ../mask_rcnn_fbnetv3a_C4.yaml.
from detectron2.config import LazyCall as L
from detectron2.modeling.poolers import ROIPooler

from fbnet_zoo.detection.d2 import lazy as fb

from .faster_rcnn_fbnet_C4 import dataloader, fbnet, lr_multiplier, model, optimizer, train  # noqa: F401

model.roi_heads.mask_in_features = ["res4"]
model.roi_heads.mask_pooler = L(ROIPooler)(output_size=14, scales=(1.0 / 16,), sampling_ratio=0,
                                           pooler_type="ROIAlignV2")
model.roi_heads.mask_head = L(fb.mask_head)(
    arch="${fbnet.arch}", variant="c4", in_channels=L(fb.trunk_channels)(arch="${fbnet.arch}"),
    num_classes="${..num_classes}", pooler_resolution=14, norm="${fbnet.head_norm}")
dataloader.train.mapper.use_instance_mask = True
