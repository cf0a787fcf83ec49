"""Keypoint R-CNN with the FBNet keypoint head (d2go's design), and the registry of every
d2go FBNetV3 model-zoo detector (skipped where detectron2 is not installed; CI has none).

The authors' Keypoint R-CNN config builds, trains (a step on a toy COCO person-keypoints set
that tools-free code generates here) and infers; its heatmaps are 2x the head body's output;
a checkpoint written in d2go's layout loads back with equal outputs; the input check refuses
a model that normalises differently from the checkpoint. Outputs equal to d2go's own model:
tests/test_detection_d2go_parity.py (needs d2go)."""


import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (it is not on PyPI; see README: Detection)")

from detectron2.data import DatasetMapper, build_detection_train_loader  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from fbnet_zoo.checkpoints import get_source  # noqa: E402
from fbnet_zoo.detection import DetectionError  # noqa: E402
from fbnet_zoo.detection import d2  # noqa: E402
from fbnet_zoo.detection.convert import load_d2go_weights, ours_to_d2go  # noqa: E402
from fbnet_zoo.detection.core import KeypointPredictor, mask_scale, resolve_arch  # noqa: E402
from fbnet_zoo.detection.toy_data import KEYPOINT_NAMES, make_toy_keypoint_coco  # noqa: E402

KEYPOINT_CONFIG = "authors/keypoint_rcnn_fbnetv3a_dsmask_C4.yaml"

# Every FBNetV3 detector of d2go's MODEL_ZOO.md: source, config, published COCO val2017 figures.
PUBLISHED = [
    ("FBNetV3-A-d2go:faster_rcnn_c4", "authors/faster_rcnn_fbnetv3a_C4.yaml", {"box_ap": 22.99}),
    ("FBNetV3-A-dsmask-d2go:faster_rcnn_c4", "authors/faster_rcnn_fbnetv3a_dsmask_C4.yaml", {"box_ap": 21.06}),
    ("FBNetV3-G-d2go:faster_rcnn_fpn", "authors/faster_rcnn_fbnetv3g_fpn.yaml", {"box_ap": 43.13}),
    ("FBNetV3-A-d2go:mask_rcnn_c4", "authors/mask_rcnn_fbnetv3a_C4.yaml", {"box_ap": 23.05, "mask_ap": 20.71}),
    ("FBNetV3-A-dsmask-d2go:mask_rcnn_c4", "authors/mask_rcnn_fbnetv3a_dsmask_C4.yaml",
     {"box_ap": 21.76, "mask_ap": 19.97}),
    ("FBNetV3-G-d2go:mask_rcnn_fpn", "authors/mask_rcnn_fbnetv3g_fpn.yaml", {"box_ap": 43.31, "mask_ap": 39.24}),
    ("FBNetV3-A-dsmask-w075-d2go:keypoint_rcnn_c4", KEYPOINT_CONFIG, {"box_ap": 31.24, "keypoint_ap": 35.56}),
]


@pytest.fixture(autouse=True)
def event_storage():
    from detectron2.utils.events import EventStorage

    with EventStorage(0):
        yield


@pytest.fixture(scope="module")
def toy_keypoints(tmp_path_factory):
    paths = make_toy_keypoint_coco(str(tmp_path_factory.mktemp("toy_kp")), num_images=4, image_size=(112, 144),
                                   seed=3)
    return d2.register_coco_dataset("fbnet_toy_keypoints_test", paths["json"], paths["images"])["instances"]


def keypoint_cfg(dataset):
    cfg = d2.d2go_config("FBNetV3-A-dsmask-w075-d2go:keypoint_rcnn_c4")
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", (dataset,), "DATASETS.TEST", (dataset,),
        "DATALOADER.NUM_WORKERS", 0, "SOLVER.IMS_PER_BATCH", 2, "INPUT.RANDOM_FLIP", "none",
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32, "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 64,
        "MODEL.FBNET.NORM", "BN", "MODEL.FBNET.HEAD_NORM", "BN"])  # naiveSyncBN needs no process group, BN is its 1-process form
    return cfg


@pytest.mark.parametrize("source, config, figures", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_every_d2go_model_zoo_detector_is_a_source_with_its_config_and_published_figures(source, config, figures):
    model, name = source.split(":")
    src = get_source(model, name)
    assert src.url.startswith("https://mobile-cv.s3-us-west-2.amazonaws.com/d2go/models/")
    assert src.converter == "d2go_detection"
    published = src.published[0]
    for key, value in figures.items():
        assert published[key] == value, key
    assert d2.d2go_config_path(source).endswith(config)
    cfg = d2.d2go_config(source)
    assert cfg.MODEL.FBNET.ARCH == model
    assert cfg.INPUT.FORMAT == "BGR"
    assert cfg.MODEL.MASK_ON == ("mask_ap" in figures)
    assert cfg.MODEL.KEYPOINT_ON == ("keypoint_ap" in figures)
    if "_c4" in name:  # the authors test their C4 models with 30 proposals
        assert cfg.MODEL.RPN.POST_NMS_TOPK_TEST == 30


def test_dsmask_archs_are_the_authors_split():
    """FBNetV3_A_dsmask: its own trunk (no SE), the small box head as the stride-32 stage, and
    at width 0.75 every part scaled as d2go's builder rounds it."""
    a = resolve_arch("FBNetV3-A-dsmask-d2go")
    assert a.spec.stage_channels() == {"stage0": 16, "stage1": 32, "stage2": 40, "stage3": 112, "stage4": 160}
    assert not any(row.se for _, _, _, row in a.spec.blocks())
    assert [r.out_channels for r in a.rpn["c4"]] == [112] and a.rpn["c4"][0].repeats == 3
    w = resolve_arch("FBNetV3-A-dsmask-w075-d2go")
    assert w.spec.stage_channels() == {"stage0": 16, "stage1": 24, "stage2": 32, "stage3": 88, "stage4": 120}
    assert [r.out_channels for r in w.keypoint["c4"]] == [96, 96, 96, 48]
    assert mask_scale(w.keypoint["c4"]) == 2.0


def test_keypoint_rcnn_builds_trains_and_infers(toy_keypoints):
    cfg = keypoint_cfg(toy_keypoints)
    torch.manual_seed(0)
    model = build_model(cfg)
    head = model.roi_heads.keypoint_head
    assert isinstance(head, d2.FBNetKeypointHead) and isinstance(head.predictor, KeypointPredictor)
    # d2go's predictor: no norm anywhere
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in head.predictor.modules())

    model.train()
    batch = next(iter(build_detection_train_loader(cfg, mapper=DatasetMapper(cfg, is_train=True))))
    assert all(len(x["instances"].gt_keypoints) > 0 for x in batch)
    losses = model(batch)
    assert {"loss_keypoint", "loss_cls", "loss_box_reg", "loss_rpn_cls"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in head.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)

    model.eval()
    img = batch[0]["image"]
    with torch.no_grad():
        feats = model.backbone(model.preprocess_image([{"image": img}]).tensor)
        rois = torch.rand(3, 6 * 6 * head.keypoint_feature[0].pw.conv.in_channels)
        heat = head.layers(rois.view(3, -1, 6, 6))
        out = model([{"image": img, "height": img.shape[1], "width": img.shape[2]}])[0]["instances"]
    assert feats["res4"].shape[1] == 88
    assert heat.shape == (3, 17, 24, 24)  # 6x6 RoIs -> 3 -> 6 -> 12 (body) -> 24 (predictor)
    assert len(out) > 0
    assert out.pred_keypoints.shape == (len(out), 17, 3)
    assert out.pred_keypoint_heatmaps.shape == (len(out), 17, 24, 24)


def test_keypoint_checkpoint_in_d2go_layout_loads_with_equal_outputs(toy_keypoints, tmp_path):
    cfg = keypoint_cfg(toy_keypoints)
    torch.manual_seed(1)
    source = build_model(cfg).eval()
    d2go_sd = ours_to_d2go(source.state_dict(), source)
    assert "roi_heads.keypoint_head.predictor.kps_score_lowres.pw.conv.weight" in d2go_sd
    assert "roi_heads.keypoint_head.feature_extractor.0.fbnetv2_0_0.pw.conv.weight" in d2go_sd
    path = tmp_path / "model_final.pth"
    torch.save({"model": d2go_sd}, path)
    torch.manual_seed(2)
    target = build_model(cfg).eval()
    load_d2go_weights(target, str(path), cache=str(tmp_path / "cache"), pixel_std=cfg.MODEL.PIXEL_STD)
    img = (torch.rand(3, 112, 144) * 255).round()
    with torch.no_grad():
        a = source([{"image": img}])[0]["instances"]
        b = target([{"image": img}])[0]["instances"]
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    assert torch.equal(a.pred_keypoints, b.pred_keypoints)
    # the source's recorded statistics are what the check wants: std 1 is refused
    cfg_std1 = keypoint_cfg(toy_keypoints)
    cfg_std1.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
    with pytest.raises(DetectionError, match=r"MODEL.PIXEL_STD: \[1.0, 1.0, 1.0\] is not \[57.375"):
        load_d2go_weights(build_model(cfg_std1), "FBNetV3-A-dsmask-w075-d2go:keypoint_rcnn_c4")


def test_toy_keypoint_set_is_coco_person_keypoints(toy_keypoints):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    meta = MetadataCatalog.get(toy_keypoints)
    assert list(meta.keypoint_names) == list(KEYPOINT_NAMES)
    assert ("left_eye", "right_eye") in [tuple(p) for p in meta.keypoint_flip_map]
    import json

    assert len(DatasetCatalog.get(toy_keypoints)[0]["annotations"][0]["keypoints"]) == 17 * 3
    with open(meta.json_file, encoding="utf-8") as f:
        ann = json.load(f)["annotations"][0]  # (detectron2 shifts keypoints by half a pixel on load)
    assert ann["num_keypoints"] == 17 and set(ann["keypoints"][2::3]) == {2}
    x, y, w, h = ann["bbox"]
    xs, ys = ann["keypoints"][0::3], ann["keypoints"][1::3]
    assert min(xs) >= x - 0.01 and max(xs) <= x + w + 0.01 and min(ys) >= y - 0.01 and max(ys) <= y + h + 0.01
