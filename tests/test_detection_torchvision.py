"""torchvision path (always runs in CI): build, train steps lower the loss on the toy COCO
set, pycocotools evaluation returns metrics; bad input fails at build time."""

import os
import sys

import pytest
import torch

from fbnet_zoo.detection import DetectionError, c4_split, feature_layout, resolve_arch
from fbnet_zoo.detection import tv as fdt
from fbnet_zoo.detection.toy_data import make_toy_coco

FAST = dict(min_size=128, max_size=128, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
            rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, rpn_batch_size_per_image=64,
            box_batch_size_per_image=32, box_detections_per_img=20)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_coco(str(tmp_path_factory.mktemp("toy_coco")), num_images=4, image_size=(128, 128), seed=0)


def test_module_name_does_not_shadow_real_torchvision():
    import torchvision

    assert fdt.__name__ == "fbnet_zoo.detection.tv"
    assert "fbnet_zoo" not in torchvision.__file__ and hasattr(torchvision, "ops")
    assert sys.modules["torchvision"] is torchvision
    with pytest.warns(DeprecationWarning, match="renamed fbnet_zoo.detection.tv"):
        sys.modules.pop("fbnet_zoo.detection.torchvision", None)
        from fbnet_zoo.detection import torchvision as old  # the deprecated alias still works
    assert old.fasterrcnn_fbnet is fdt.fasterrcnn_fbnet and old.CocoDetection is fdt.CocoDetection


def _overfit(model, ds, steps, lr):
    torch.manual_seed(0)
    batch = fdt.collate([ds[i] for i in range(len(ds))])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    return fdt.train_steps(model, [batch], opt, steps)


def test_faster_rcnn_c4_trains_and_evaluates(toy):
    torch.manual_seed(0)
    ds = fdt.CocoDetection(toy["json"], toy["images"])
    model = fdt.fasterrcnn_fbnet("FBNetV3-A", variant="c4", num_classes=4, **FAST)
    # C4: trunk ends at stride 16, the box head runs the stride-32 stage.
    assert model.backbone.out_channels == resolve_arch("FBNetV3-A").spec.stage_channels()["stage4"]
    losses = _overfit(model, ds, 8, 1e-3)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    metrics = fdt.evaluate_coco(model, ds)
    assert set(metrics["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert all(0.0 <= v <= 100.0 for v in metrics["bbox"].values())


def test_mask_rcnn_fpn_trains_and_evaluates(toy):
    torch.manual_seed(0)
    ds = fdt.CocoDetection(toy["json"], toy["images"], masks=True)
    model = fdt.maskrcnn_fbnet("FBNetV3-A", variant="fpn", num_classes=4, fpn_channels=32, **FAST)
    losses = _overfit(model, ds, 6, 1e-3)
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    model.eval()
    with torch.no_grad():
        out = model([ds[0][0]])[0]
    assert out["masks"].shape[1:] == (1, 128, 128)
    metrics = fdt.evaluate_coco(model, ds, iou_types=("bbox", "segm"))
    assert set(metrics) == {"bbox", "segm"}


def test_fpn_features_and_strides():
    model = fdt.fasterrcnn_fbnet("FBNetV3-A", variant="fpn", num_classes=3, fpn_channels=16)
    model.eval()
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 128, 128))
    assert list(feats) == ["res2", "res3", "res4", "res5", "pool"]
    # strides 4, 8, 16, 32, 64: the FPN trunk uses k // 2 depthwise padding (see core.same_padding)
    assert [tuple(v.shape[-2:]) for v in feats.values()] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    assert all(v.shape[1] == 16 for v in feats.values())


@pytest.mark.parametrize("name", ["FBNetV3-A", "FBNetV3-E", "FBNetV3-A-d2go", "FBNetV3-G-d2go"])
def test_c4_split_and_layout(name):
    spec = resolve_arch(name).spec
    trunk, box = c4_split(spec)
    strides = spec.stage_strides()
    assert strides[f"stage{trunk[-1]}"] == 16 and all(strides[f"stage{i}"] == 32 for i in box)
    assert [f.name for f in feature_layout(spec) if f.stride >= 4] == ["res2", "res3", "res4", "res5"]


def test_bad_input_fails_at_build_time():
    with pytest.raises(DetectionError, match="unknown model 'FBNetV3-Q'"):
        fdt.fasterrcnn_fbnet("FBNetV3-Q")
    no16 = {"name": "tiny", "input_size": 64, "stages": [[{"type": "conv", "out_channels": 8, "stride": 2}],
                                                          [{"type": "ir", "out_channels": 16, "stride": 2}]]}
    with pytest.raises(DetectionError, match="no stride-16 stage"):
        fdt.fasterrcnn_fbnet(no16)
    with pytest.raises(DetectionError, match="'res7' is not a feature"):
        fdt.fasterrcnn_fbnet("FBNetV3-A", variant="fpn", fpn_features=["res4", "res7"])
    with pytest.raises(DetectionError, match="doubling"):
        fdt.fasterrcnn_fbnet("FBNetV3-A", variant="fpn", fpn_features=["res2", "res4"])
    with pytest.raises(DetectionError, match="variant"):
        fdt.fasterrcnn_fbnet("FBNetV3-A", variant="c5")


def test_make_toy_coco_cli(tmp_path):
    import json
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, os.path.join(root, "tools", "make_toy_coco.py"), str(tmp_path), "--num-images", "3",
                    "--size", "64", "80", "--seed", "3"], check=True, capture_output=True)
    with open(tmp_path / "annotations.json") as f:
        data = json.load(f)
    assert len(data["images"]) == 3 and data["images"][0]["height"] == 64 and data["images"][0]["width"] == 80
    assert {c["name"] for c in data["categories"]} == {"square", "disc", "triangle"}
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        xs, ys = a["segmentation"][0][::2], a["segmentation"][0][1::2]
        assert min(xs) == x and min(ys) == y and w > 0 and h > 0 and a["area"] > 0
    assert len(os.listdir(tmp_path / "sem_seg")) == 3
