# Faster R-CNN FPN on an FBNet trunk (LazyConfig, new-baseline style): res2..res5 into
# detectron2's FPN (p2..p6), the FBNet RPN head shared over levels, the stride-32 stages
# rebuilt for the FPN's channels as RoI box head. Same model as ../faster_rcnn_fbnetv3g_fpn.yaml.
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch import GeneralizedRCNN
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN
from detectron2.modeling.roi_heads import FastRCNNOutputLayers, StandardROIHeads

from fbnet_zoo.detection.d2 import build_backbone
from fbnet_zoo.detection.d2 import lazy as fb

fbnet = dict(arch="FBNetV3-G", norm="BN", head_norm="BN", pretrained="", fpn_channels=160)

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
optimizer = model_zoo.get_config("common/optim.py").SGD
lr_multiplier = model_zoo.get_config("common/coco_schedule.py").lr_multiplier_3x
train = model_zoo.get_config("common/train.py").train

model = L(GeneralizedRCNN)(
    backbone=L(build_backbone)(arch="${fbnet.arch}", variant="fpn", in_features=["res2", "res3", "res4", "res5"],
                               fpn_channels="${fbnet.fpn_channels}", fpn_norm="", norm="${fbnet.norm}",
                               pretrained="${fbnet.pretrained}"),
    proposal_generator=L(RPN)(
        in_features=["p2", "p3", "p4", "p5", "p6"],
        head=L(fb.rpn_head)(arch="${fbnet.arch}", variant="fpn", in_channels="${fbnet.fpn_channels}", num_anchors=3,
                            norm="${fbnet.head_norm}"),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[32], [64], [128], [256], [512]], aspect_ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64],
            offset=0.0),
        anchor_matcher=L(Matcher)(thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(2000, 1000),
        post_nms_topk=(1000, 1000),
        nms_thresh=0.7,
    ),
    roi_heads=L(StandardROIHeads)(
        num_classes=80,
        batch_size_per_image=512,
        positive_fraction=0.25,
        proposal_matcher=L(Matcher)(thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False),
        box_in_features=["p2", "p3", "p4", "p5"],
        box_pooler=L(ROIPooler)(output_size=6, scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32), sampling_ratio=0,
                                pooler_type="ROIAlignV2"),
        box_head=L(fb.box_head)(arch="${fbnet.arch}", variant="fpn", in_channels="${fbnet.fpn_channels}",
                                head_norm="${fbnet.head_norm}"),
        box_predictor=L(FastRCNNOutputLayers)(
            input_shape=L(ShapeSpec)(channels=L(fb.box_head_channels)(arch="${fbnet.arch}")),
            test_score_thresh=0.05,
            box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
            num_classes="${..num_classes}",
        ),
    ),
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    input_format="RGB",
)

dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.use_instance_mask = False
optimizer.lr = 0.02
optimizer.weight_decay = 4e-5
train.max_iter = 270000
