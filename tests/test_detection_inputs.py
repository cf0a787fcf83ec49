"""Detection input is checked at our boundary (issue 16 item 12): the torchvision detectors
refuse NaN / inf / empty boxes, out-of-range labels, label-count mismatches, non-RGB and
absurdly sized images; CocoDetection refuses malformed annotation files. Every error is a
DetectionError naming the image / annotation id and the field."""

import copy
import json

import pytest
import torch

from fbnet_zoo.detection import DetectionError
from fbnet_zoo.detection import tv
from fbnet_zoo.detection.toy_data import make_toy_coco


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = tv.fasterrcnn_fbnet("FBNetV3-A", variant="c4", num_classes=4, min_size=96, max_size=96)
    return m.train()


def good():
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([1]),
                "image_id": torch.tensor(11)},
               {"boxes": torch.tensor([[1.0, 2.0, 20.0, 22.0], [5.0, 5.0, 9.0, 9.0]]), "labels": torch.tensor([2, 3]),
                "image_id": torch.tensor(12)}]
    return images, targets


def test_good_input_trains(model):
    images, targets = good()
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())


def _set(i, key, value):
    def change(images, targets):
        targets[i][key] = value
    return change


def _image(i, value):
    def change(images, targets):
        images[i] = value
    return change


CASES = {
    "nan_box": (_set(1, "boxes", torch.tensor([[1.0, 2.0, 20.0, 22.0], [5.0, float("nan"), 9.0, 9.0]])),
                r"images\[1\] \(image_id 12\)\.boxes\[1\]: \[5\.0, nan, 9\.0, 9\.0\] is not finite"),
    "inf_box": (_set(0, "boxes", torch.tensor([[4.0, 4.0, float("inf"), 40.0]])),
                r"images\[0\] \(image_id 11\)\.boxes\[0\]: .* is not finite"),
    "empty_box": (_set(0, "boxes", torch.tensor([[4.0, 4.0, 4.0, 40.0]])), r"boxes\[0\].*no positive width"),
    "label_minus_one": (_set(1, "labels", torch.tensor([2, -1])),
                        r"image_id 12\)\.labels\[1\]: -1 is not a class of this model \(1\.\.3"),
    "label_background": (_set(0, "labels", torch.tensor([0])), r"labels\[0\]: 0 is not a class"),
    "label_out_of_range": (_set(0, "labels", torch.tensor([4])), r"labels\[0\]: 4 is not a class of this model"),
    "label_count_mismatch": (_set(1, "labels", torch.tensor([2])), r"labels: 1 label\(s\) for 2 box\(es\)"),
    "float_labels": (_set(0, "labels", torch.tensor([1.0])), r"labels: .* is not N integers"),
    "boxes_wrong_shape": (_set(0, "boxes", torch.tensor([4.0, 4.0, 30.0, 40.0])), r"boxes: shape \(4,\)"),
    "missing_labels": (lambda im, t: t[0].pop("labels"), r"image_id 11\)\.labels: missing"),
    "grey_image": (_image(0, torch.rand(1, 64, 80)), r"images\[0\] \(image_id 11\): shape \(1, 64, 80\) is not 3 x H x W"),
    "rgba_image": (_image(1, torch.rand(4, 64, 80)), r"images\[1\].*shape \(4, 64, 80\)"),
    "uint8_image": (_image(0, torch.zeros(3, 64, 80, dtype=torch.uint8)), r"dtype torch.uint8 is not floating"),
    "sliver_image": (_image(0, torch.rand(3, 5000, 10)), r"size 5000 x 10 is outside the supported range"),
    "huge_image": (_image(0, torch.zeros(3, 8200, 1000)), r"size 8200 x 1000 is outside"),
    "nan_image": (_image(1, torch.full((3, 72, 64), float("nan"))), r"images\[1\].*NaN or infinite pixel"),
    "target_count_mismatch": (lambda im, t: t.pop(), r"targets: 1 target\(s\) for 2 image\(s\)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_detection_input_is_refused_with_a_named_field(model, case):
    change, message = CASES[case]
    images, targets = good()
    change(images, targets)
    with pytest.raises(DetectionError, match=message):
        model(images, targets)


def test_mask_targets_are_checked():
    m = tv.maskrcnn_fbnet("FBNetV3-A", variant="c4", num_classes=4, min_size=96, max_size=96).train()
    images, targets = good()
    for t, img in zip(targets, images):
        t["masks"] = torch.zeros(len(t["boxes"]), *img.shape[1:], dtype=torch.uint8)
    targets[1]["masks"] = targets[1]["masks"][:1]
    with pytest.raises(DetectionError, match=r"image_id 12\)\.masks: shape \(1, 72, 64\) is not 2 x 72 x 64"):
        m(images, targets)


# ----------------------------------------------------------------------------- COCO files
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_coco(str(tmp_path_factory.mktemp("toy_inputs")), num_images=3, image_size=(64, 64), seed=4)


def _ann(data, n=0):
    return data["annotations"][n]


COCO_CASES = {
    "not_json": ("{images: [", r"not valid JSON \(.* at line 1, column 2\)"),
    "top_level_list": ([], r"the top level is a list"),
    "no_images": (lambda d: d.pop("images"), r"images: missing"),
    "images_not_list": (lambda d: d.update(images={}), r"images: dict is not a list"),
    "image_without_id": (lambda d: d["images"][1].pop("id"), r"images\[1\]\.id: missing"),
    "image_id_string": (lambda d: d["images"][0].update(id="1"), r"images\[0\] \(id '1'\)\.id: '1' is not an integer"),
    "image_zero_height": (lambda d: d["images"][2].update(height=0), r"images\[2\] \(id 3\)\.height: 0 is not a positive"),
    "duplicate_image_id": (lambda d: d["images"][1].update(id=1), r"images\[1\] \(id 1\)\.id: 1 is used twice"),
    "category_without_name": (lambda d: d["categories"][0].pop("name"), r"categories\[0\] \(id 1\)\.name: missing"),
    "annotation_without_bbox": (lambda d: _ann(d).pop("bbox"), r"annotations\[0\] \(id 1\)\.bbox: missing"),
    "annotation_unknown_image": (lambda d: _ann(d).update(image_id=99),
                                 r"annotations\[0\] \(id 1, image_id 99\)\.image_id: 99 is not the id of an image"),
    "annotation_unknown_category": (lambda d: _ann(d, 1).update(category_id=7),
                                    r"annotations\[1\] \(id 2, .*\)\.category_id: 7 is not one of the categories"),
    "bbox_three_numbers": (lambda d: _ann(d).update(bbox=[1, 2, 3]), r"\.bbox: \[1, 2, 3\] is not \[x, y, width"),
    "bbox_string": (lambda d: _ann(d).update(bbox="1,2,3,4"), r"\.bbox: '1,2,3,4' is not"),
    "bbox_nan": (lambda d: _ann(d).update(bbox=[1.0, float("nan"), 3.0, 4.0]), r"annotations\[0\] \(id 1.*bbox: .* is not finite"),
    "bbox_negative_size": (lambda d: _ann(d).update(bbox=[10, 10, -5, 4]), r"\.bbox: \[10, 10, -5, 4\] has no positive"),
    "bbox_zero_size": (lambda d: _ann(d).update(bbox=[10, 10, 0, 0]), r"has no positive width and height"),
    "bbox_negative_origin": (lambda d: _ann(d).update(bbox=[-3, 10, 5, 5]), r"starts outside the image"),
    "iscrowd_two": (lambda d: _ann(d).update(iscrowd=2), r"\.iscrowd: 2 is not 0 or 1"),
    "area_negative": (lambda d: _ann(d).update(area=-1), r"\.area: -1 is not a finite number >= 0"),
    "segmentation_string": (lambda d: _ann(d).update(segmentation="poly"), r"\.segmentation: str is not polygons"),
}


@pytest.mark.parametrize("case", sorted(COCO_CASES))
def test_malformed_coco_file_is_refused_naming_the_record(toy, tmp_path, case):
    change, message = COCO_CASES[case]
    path = tmp_path / "bad.json"
    if isinstance(change, str):
        path.write_text(change)
    elif isinstance(change, list):
        path.write_text(json.dumps(change))
    else:
        with open(toy["json"]) as f:
            data = json.load(f)
        data = copy.deepcopy(data)
        change(data)
        path.write_text(json.dumps(data))
    with pytest.raises(DetectionError, match=message) as err:
        tv.CocoDetection(str(path), toy["images"])
    assert str(path) in str(err.value)


def test_missing_annotation_file_and_unreadable_image(toy, tmp_path):
    with pytest.raises(DetectionError, match="no such annotation file"):
        tv.CocoDetection(str(tmp_path / "none.json"), toy["images"])
    ds = tv.CocoDetection(toy["json"], toy["images"])
    assert len(ds) == 3 and ds[0][1]["boxes"].shape[1] == 4
    with pytest.raises(DetectionError, match=r"image_root .*nowhere: no such folder; expected the folder of the images"):
        tv.CocoDetection(toy["json"], str(tmp_path / "nowhere"))  # was: each image's read error, inside the loader
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "000000.png").write_bytes(b"not a png")
    broken = tv.CocoDetection(toy["json"], str(tmp_path / "images"))
    with pytest.raises(DetectionError, match=r"image_id 1: .*000000.png: cannot be read as an image"):
        broken[0]


@pytest.mark.parametrize("kwargs, message", [
    ({"num_images": -3}, "num_images: -3 is below the minimum 1"),      # was: an empty data set, silently
    ({"image_size": (-5, -5)}, "image_size[0]: -5 is below the minimum 8"),  # was: numpy's traceback
    ({"max_objects": 0}, "max_objects: 0 is below the minimum 1"),
])
def test_toy_coco_refuses_bad_sizes_before_writing(tmp_path, kwargs, message):
    with pytest.raises(DetectionError) as info:
        make_toy_coco(str(tmp_path / "toy"), **kwargs)
    assert message in str(info.value)
    assert not (tmp_path / "toy").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"num_classes": -5}, "num_classes (background included): -5 is below the minimum 2"),  # was torch's error
    ({"num_classes": 0}, "num_classes (background included): 0 is below the minimum 2"),    # was built, untrainable
    ({"variant": "fpn", "fpn_channels": 0}, "fpn_channels: 0 is below the minimum 1"),
])
def test_torchvision_builders_refuse_bad_sizes(kwargs, message):
    with pytest.raises(DetectionError) as info:
        tv.fasterrcnn_fbnet("FBNetV3-A", **kwargs)
    assert message in str(info.value)


def test_toy_coco_never_writes_into_a_folder_that_holds_files(tmp_path, capsys, monkeypatch):
    """tools/make_toy_coco.py wrote images/000000.png ... and annotations.json into any folder,
    over files of the same names; a crash left a half set. Now a folder that holds anything is
    refused unless --overwrite, and a set appears complete or not at all."""
    import importlib.util
    import os

    from PIL import Image

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("make_toy_coco_tool", os.path.join(repo, "tools", "make_toy_coco.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    mine = tmp_path / "mine"
    (mine / "images").mkdir(parents=True)
    (mine / "images" / "000000.png").write_bytes(b"the user's image")
    (mine / "annotations.json").write_text("the user's annotations")
    small = ["--num-images", "2", "--size", "32"]
    assert tool.main([str(mine)] + small) == 2
    err = capsys.readouterr().err
    assert f"toy COCO root '{mine}' is not empty (annotations.json, images): refusing" in err and "--overwrite" in err
    assert (mine / "images" / "000000.png").read_bytes() == b"the user's image"
    assert (mine / "annotations.json").read_text() == "the user's annotations"

    (mine / "images" / "extra.png").write_bytes(b"x")
    (mine / "notes.txt").write_text("kept")
    assert tool.main([str(mine), "--overwrite"] + small) == 0   # the set's own entries replaced, nothing else
    assert sorted(os.listdir(mine)) == ["annotations.json", "images", "notes.txt", "sem_seg"]
    assert sorted(os.listdir(mine / "images")) == ["000000.png", "000001.png"]
    assert len(json.loads((mine / "annotations.json").read_text())["images"]) == 2
    assert (mine / "notes.txt").read_text() == "kept"

    saved = []
    real_save = Image.Image.save

    def save_then_crash(self, *a, **k):
        saved.append(a[0])
        if len(saved) == 3:
            raise OSError("disk full")
        return real_save(self, *a, **k)

    monkeypatch.setattr(Image.Image, "save", save_then_crash)
    with pytest.raises(OSError, match="disk full"):
        make_toy_coco(str(tmp_path / "crashed"), num_images=2, image_size=(32, 32))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["mine"]                 # no half set, no temporary folder
    (tmp_path / "empty").mkdir()
    paths = make_toy_coco(str(tmp_path / "empty"), num_images=1, image_size=(32, 32))
    assert paths["json"] == str(tmp_path / "empty" / "annotations.json") and os.path.isfile(paths["json"])
    make_toy_coco(str(tmp_path / "new"), num_images=1, image_size=(32, 32))
    assert sorted(os.listdir(tmp_path)) == ["empty", "mine", "new"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(tmp_path / "new").st_mode & 0o777 == 0o777 & ~umask  # as a folder made in place would be
