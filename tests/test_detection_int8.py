"""int8 detectors (skipped where detectron2 is not installed; CI has none).

The authors' FBNetV3-A C4 Faster R-CNN / Mask R-CNN and the Keypoint R-CNN with random
weights and perturbed BN statistics (test_detection_deploy.randomised): post-training
quantization makes every FBNet part int8 (trunk, RPN head, RoI box head, mask / keypoint
head), each part stays close to fp32, and the one-file TorchScript export (post-processing
included) equals the eager int8 detector at the traced size and at another one."""

import copy

import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (it is not on PyPI; see README: Detection)")

from test_detection_deploy import assert_export_equals_eager, image, randomise, randomised  # noqa: E402

from fbnet_zoo.detection import DetectionError  # noqa: E402
from fbnet_zoo.detection.d2.deploy import AUTHORS_C4_TEST_TOPK, deploy_detector  # noqa: E402
from fbnet_zoo.detection.d2.quantization import export_int8_detector, int8_parts, quantize_detector  # noqa: E402
from fbnet_zoo.quantize import SamePaddedQuantizedConv  # noqa: E402

CASES = [pytest.param("FBNetV3-A-d2go:faster_rcnn_c4", ("backbone", "rpn_head", "box_head"), (), id="faster"),
         pytest.param("FBNetV3-A-d2go:mask_rcnn_c4", ("backbone", "rpn_head", "box_head", "mask_head"),
                      ("pred_masks",), id="mask", marks=pytest.mark.slow),  # ~60 s
         pytest.param("FBNetV3-A-dsmask-w075-d2go:keypoint_rcnn_c4",
                      ("backbone", "rpn_head", "box_head", "keypoint_head"), ("pred_keypoints",), id="keypoint")]


def _quantized_modules(module):
    return [m for m in module.modules() if type(m).__module__.startswith("torch.ao.nn.quantized")]


@pytest.mark.parametrize("source, parts, extra", CASES)
def test_whole_detector_int8_and_its_export_equal_eager(source, parts, extra, tmp_path):
    cfg, model = randomised(source)
    deployed = deploy_detector(model, **AUTHORS_C4_TEST_TOPK)
    q = quantize_detector(deployed, [image(224, 320, seed=s) for s in range(3)])
    assert int8_parts(q) == list(parts)
    assert not _quantized_modules(deployed)  # the input is untouched
    heads = q.roi_heads
    assert _quantized_modules(q.proposal_generator.rpn_head) and _quantized_modules(heads.box_head)
    assert heads.box_head.output_shape.channels == deployed.roi_heads.box_head.output_shape.channels
    # depthwise convs padded below k // 2 (reference archs' stride-2 rows) run on fbgemm's fast kernel
    under = [m for m in deployed.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1
             and any(p < k // 2 for k, p in zip(m.kernel_size, m.padding))]
    assert len([m for m in q.modules() if isinstance(m, SamePaddedQuantizedConv)]) == len(under)

    # each int8 part stays close to its fp32 part (random weights and perturbed BN statistics
    # are a hard case for int8; a wrong scale or a dropped part gives ~0)
    x = image(240, 320, seed=7)
    cos = torch.nn.functional.cosine_similarity
    with torch.no_grad():
        t = deployed.preprocess_image([{"image": x}]).tensor
        f32, i8 = deployed.backbone(t)["res4"], q.backbone(t)["res4"]
        assert float(cos(f32.flatten(), i8.flatten(), dim=0)) > 0.8
        l32, l8 = deployed.proposal_generator.rpn_head([f32])[0][0], q.proposal_generator.rpn_head([f32])[0][0]
        assert float(cos(l32.flatten(), l8.flatten(), dim=0)) > 0.8
        rois = f32[:, :, :6, :6].expand(8, -1, -1, -1)
        b32, b8 = deployed.roi_heads.box_head(rois), heads.box_head(rois)
        assert float(cos(b32.flatten(), b8.flatten(), dim=0)) > 0.8
        want = q.inference([{"image": x}], do_postprocess=False)[0]
    assert len(want) > 0

    path = tmp_path / "detector_int8.ts"
    export_int8_detector(q, x, str(path))
    assert_export_equals_eager(q, path, sorted(want.get_fields()), extra, rtol=1e-4)


def test_quantize_detector_refuses_bad_input():
    cfg, model = randomised("FBNetV3-A-d2go:faster_rcnn_c4")
    with pytest.raises(DetectionError, match="images is empty"):
        quantize_detector(model, [])
    with pytest.raises(DetectionError, match="parts: 'mask_head'"):
        quantize_detector(model, [image(224, 320)], parts=["mask_head"])
    with pytest.raises(DetectionError, match="parts: 'neck' is not one of"):
        quantize_detector(model, [image(224, 320)], parts=["neck"])
    with pytest.raises(DetectionError, match="GeneralizedRCNN"):
        quantize_detector(torch.nn.Conv2d(3, 3, 1), [image(224, 320)])


def test_export_tool_writes_an_int8_detector(tmp_path, capsys):
    """tools/export.py --detector CONFIG --format int8: calibrated on image files, one
    TorchScript file with the post-processing that loads and detects; refusals are one line."""
    import importlib.util
    import os

    from fbnet_zoo.detection.toy_data import make_toy_coco

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("fbnet_export_tool", os.path.join(repo, "tools", "export.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    images = make_toy_coco(str(tmp_path / "toy"), num_images=3, image_size=(224, 288))["images"]
    config = os.path.join(repo, "model_configs", "detection", "authors", "faster_rcnn_fbnetv3a_C4.yaml")
    small = ["--opts", "MODEL.FBNET.NORM", "BN", "MODEL.FBNET.HEAD_NORM", "BN", "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
             "0.01"]
    # random weights without ties (detectron2's init scores every box alike): a checkpoint to --weights
    from detectron2.checkpoint import DetectionCheckpointer
    from fbnet_zoo.detection.d2.export import load_detector

    cfg, model = load_detector(config, opts=small[1:])
    DetectionCheckpointer(randomise(model), save_dir=str(tmp_path)).save("random")
    assert tool.main(["--detector", config, "--weights", str(tmp_path / "random.pth"), "--format", "int8",
                      "--calibration", images, "--calibration-images", "2", "--out", str(tmp_path / "out") + os.sep,
                      *small]) == 0
    path = tmp_path / "out" / "faster_rcnn_fbnetv3a_C4_int8.ts"
    assert path.exists()
    assert "int8 parts: backbone, rpn_head, box_head" in capsys.readouterr().out
    with torch.no_grad():
        boxes, classes, scores, size = torch.jit.load(str(path))(image(224, 288, seed=5))
    assert boxes.shape == (len(classes), 4) and len(scores) == len(classes) > 0
    # without --format: fp32 TorchScript (the classifier's default "both" was refused for a detector)
    assert tool.main(["--detector", config, "--weights", str(tmp_path / "random.pth"), "--calibration", images,
                      "--calibration-images", "1", "--out", str(tmp_path / "fp32") + os.sep, *small]) == 0
    assert capsys.readouterr().out.startswith(f"torchscript: {tmp_path / 'fp32' / 'faster_rcnn_fbnetv3a_C4.ts'} ")
    with torch.no_grad():
        assert len(torch.jit.load(str(tmp_path / "fp32" / "faster_rcnn_fbnetv3a_C4.ts"))(image(224, 288, seed=5))) == 4
    assert tool.main(["--detector", config, "--format", "int8", "--out", str(tmp_path / "x.ts")]) == 1
    assert "--calibration DIR is required" in capsys.readouterr().err
    assert tool.main(["--detector", config, "--format", "onnx", "--calibration", images, "--out", "x.onnx"]) == 1
    assert "torchscript or int8" in capsys.readouterr().err


def test_float_stem_stages_stay_float_and_the_rest_int8(tmp_path):
    """float_stages=2: the stem and first stage float, the trunk's later stages one int8 graph;
    the trunk stays close to fp32 and the detector still exports equal to eager."""
    from fbnet_zoo.detection.d2.quantization import MixedTrunk

    cfg, model = randomised("FBNetV3-A-d2go:faster_rcnn_c4")
    deployed = deploy_detector(model, **AUTHORS_C4_TEST_TOPK)
    q = quantize_detector(deployed, [image(224, 320, seed=s) for s in range(2)], float_stages=2)
    body = q.backbone.body
    assert isinstance(body, MixedTrunk) and len(body.float_stages) == 2
    assert not _quantized_modules(body.float_stages) and _quantized_modules(body.tail)
    x = image(240, 320, seed=7)
    with torch.no_grad():
        t = deployed.preprocess_image([{"image": x}]).tensor
        f32, i8 = deployed.backbone(t)["res4"], q.backbone(t)["res4"]
    assert float(torch.nn.functional.cosine_similarity(f32.flatten(), i8.flatten(), dim=0)) > 0.8
    export_int8_detector(q, x, str(tmp_path / "mixed.ts"))  # raises when traced != eager
    with pytest.raises(DetectionError, match="float_stages: 9 would leave"):
        quantize_detector(deployed, [x], float_stages=9)


# --- FPN detectors -------------------------------------------------------------------------------
# The shipped FPN configs (model_configs/detection/*_fpn.yaml) with 3 classes, a normed FPN (as the
# authors' FPN models have: its BN calibrated by `randomise` keeps the random levels finite) and
# 200 / 50 test proposals (<= 1000 boxes into the RPN's NMS over 5 levels: above that torchvision's
# batched_nms takes another path in eager mode than traced, and int8 logits' ties come out in
# another order -- deploy.export_torchscript says so); FBNetV3-A as the trunk keeps them seconds,
# the shipped FBNetV3-G runs as slow.
FPN_FAST = ["MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.FPN.NORM", "BN", "MODEL.RPN.PRE_NMS_TOPK_TEST", 200,
            "MODEL.RPN.POST_NMS_TOPK_TEST", 50, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01]


def fpn_detector(config, arch="FBNetV3-A", *opts):
    import os

    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from fbnet_zoo.detection import d2

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = get_cfg()
    d2.add_fbnet_config(cfg)
    cfg.merge_from_file(os.path.join(repo, "model_configs", "detection", config))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *FPN_FAST, "MODEL.FBNET.ARCH", arch, *opts])
    torch.manual_seed(0)
    model = randomise(build_model(cfg).eval())
    with torch.no_grad():  # the random levels reach ~1e3: smaller deltas keep the decoded boxes boxes
        for name, t in model.named_parameters():
            if "anchor_deltas" in name or "bbox_pred" in name:
                t.mul_(0.01)
    return cfg, model


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


# every box kept (score threshold 0): a random detector's int8 scores may all fall below 0.01
KEEP_ALL = ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)
FPN_CASES = [
    pytest.param("faster_rcnn_fbnetv3g_fpn.yaml", "FBNetV3-A", KEEP_ALL, ("backbone", "rpn_head", "box_head"), (),
                 id="faster-A"),
    pytest.param("mask_rcnn_fbnetv3g_fpn.yaml", "FBNetV3-A", KEEP_ALL, ("backbone", "rpn_head", "box_head",
                                                                       "mask_head"), ("pred_masks",), id="mask-A"),
    # the shipped trunk (~40 s). Random FBNetV3-G grows its levels to ~1e4, where the RPN's decoded
    # boxes mostly degenerate: the export is checked on the traced image only (other sizes give none)
    pytest.param("faster_rcnn_fbnetv3g_fpn.yaml", "FBNetV3-G", KEEP_ALL, ("backbone", "rpn_head", "box_head"), None,
                 id="faster-G", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("config, arch, opts, parts, extra", FPN_CASES)
def test_fpn_detector_int8_quantizes_the_whole_fpn_and_exports_equal_to_eager(config, arch, opts, parts, extra,
                                                                              tmp_path):
    """FPN detectors: the whole FPN backbone (FBNet trunk, lateral / output convs, top-down
    upsample + add, P6 max pool) is one int8 graph -- one quantize at the image, one dequantize
    per level --, BN of the normed FPN convs folds, each level stays as close to fp32 as the
    int8 trunk alone leaves it (the FPN's own int8 arithmetic adds little), and the one-file
    export equals the eager int8 detector at two sizes."""
    from fbnet_zoo.detection.d2.quantization import GraphBackbone
    from fbnet_zoo.quantize import quantize_static

    cfg, model = fpn_detector(config, arch, *opts)
    deployed = deploy_detector(model)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in deployed.modules())
    x = image(176, 240, seed=7)
    # the normed FPN convs' BN folded too: the deployed FPN equals the model's FPN on the same trunk
    # (the random trunk itself grows float rounding to ~2e-3 relative by res5: compared alone)
    fpn = copy.deepcopy(model.backbone)
    fpn.bottom_up = deployed.backbone.bottom_up
    with torch.no_grad():
        t = deployed.preprocess_image([{"image": x}]).tensor
        f32 = deployed.backbone(t)
        for k, v in fpn(t).items():
            assert float((v - f32[k]).abs().max()) <= 1e-4 * max(1.0, float(v.abs().max())), k
    calib = [image(160, 224, seed=s) for s in range(2)]
    q = quantize_detector(deployed, calib)
    assert int8_parts(q) == list(parts)
    assert isinstance(q.backbone, GraphBackbone) and q.backbone.size_divisibility == deployed.backbone.size_divisibility
    graph = q.backbone.graph
    fpn_convs = {n: type(m).__module__ for n, m in graph.named_modules() if n.startswith(("fpn_lateral", "fpn_output"))
                 and "." not in n}
    assert len(fpn_convs) == 2 * len(cfg.MODEL.FPN.IN_FEATURES)
    assert all(mod.startswith("torch.ao.nn.quantized") for mod in fpn_convs.values()), fpn_convs
    targets = [str(n.target) for n in graph.graph.nodes if n.op in ("call_function", "call_method")]
    assert targets.count("dequantize") == len(f32) == 5  # p2..p6: one dequantize per level, nothing inside
    assert sum("quantize_per_tensor" in t for t in targets) == 1

    # measured (random weights and perturbed BN: a hard case; FBNetV3-A; the default 8-bit activations
    # with 7-bit weights): levels 0.58-0.69 cosine (Faster R-CNN's random trunk), 0.36-0.40 (Mask
    # R-CNN's), within 0.01 of the int8 trunk with a float FPN; a wrong FPN scale or level gives ~0
    trunk_only = copy.deepcopy(deployed)
    body = deployed.backbone.bottom_up.body
    seen = [deployed.preprocess_image([{"image": c}]).tensor for c in calib]
    trunk_only.backbone.bottom_up.body = quantize_static(body, seen, example=seen[0])
    with torch.no_grad():
        i8, ref = q.backbone(t), trunk_only.backbone(t)
        want = q.inference([{"image": x}], do_postprocess=False)[0]
    for k in f32:
        assert _cos(f32[k], i8[k]) > 0.3, k
        assert _cos(f32[k], i8[k]) > _cos(f32[k], ref[k]) - 0.03, k
    assert len(want) > 0

    path = tmp_path / "fpn_int8.ts"
    export_int8_detector(q, x, str(path))  # checks the traced file against eager on x
    if extra is not None:
        assert_export_equals_eager(q, path, sorted(want.get_fields()), extra, rtol=1e-4)
    if extra == ():  # Faster R-CNN: the file behind detectron2's model interface, as evaluators call it
        from fbnet_zoo.detection.d2.deploy import ExportedDetector

        inputs = [{"image": x, "height": 352, "width": 480}]
        with torch.no_grad():
            got = ExportedDetector(torch.jit.load(str(path)))(inputs)[0]["instances"]
            ref = q(inputs)[0]["instances"]  # GeneralizedRCNN: inference + rescale to height x width
        assert got.image_size == ref.image_size == (352, 480) and len(got) == len(ref) > 0
        assert torch.allclose(got.pred_boxes.tensor, ref.pred_boxes.tensor, rtol=1e-4, atol=1e-3)
        assert torch.equal(got.pred_classes, ref.pred_classes)


def test_fpn_float_stages_keep_the_stem_float_and_the_fpn_int8(tmp_path):
    from fbnet_zoo.detection.d2.quantization import MixedTrunk

    cfg, model = fpn_detector("faster_rcnn_fbnetv3g_fpn.yaml")
    deployed = deploy_detector(model)
    q = quantize_detector(deployed, [image(160, 224, seed=s) for s in range(2)], float_stages=1)
    mixed = q.backbone.graph
    assert isinstance(mixed, MixedTrunk) and len(mixed.float_stages) == 1
    assert not _quantized_modules(mixed.float_stages)
    assert _quantized_modules(mixed.tail.get_submodule("fpn_output2"))
    x = image(176, 240, seed=7)
    with torch.no_grad():
        t = deployed.preprocess_image([{"image": x}]).tensor
        f32, i8 = deployed.backbone(t), q.backbone(t)
    assert all(_cos(f32[k], i8[k]) > 0.4 for k in f32)
    export_int8_detector(q, x, str(tmp_path / "mixed_fpn.ts"))  # raises when traced != eager
    with pytest.raises(DetectionError, match="float_stages: 3 would leave"):
        quantize_detector(deployed, [x], float_stages=3)


def test_fpn_export_caps_the_rpn_pre_nms_topk_where_eager_and_traced_nms_agree():
    from fbnet_zoo.detection.d2.deploy import _nms_path_hint, cap_pre_nms_topk_for_export, export_pre_nms_topk

    cfg, model = fpn_detector("faster_rcnn_fbnetv3g_fpn.yaml")
    assert export_pre_nms_topk(model) is None and _nms_path_hint(model) == ""  # 200 per level: one NMS path
    model.proposal_generator.pre_nms_topk[False] = 1000
    assert export_pre_nms_topk(model) == 200 and "pre_nms_topk <= 200" in _nms_path_hint(model)
    assert cap_pre_nms_topk_for_export(model).proposal_generator.pre_nms_topk[False] == 200
    assert model.proposal_generator.pre_nms_topk[True] == cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN  # training untouched
    cfg, c4 = randomised("FBNetV3-A-d2go:faster_rcnn_c4")
    assert export_pre_nms_topk(c4) is None  # one level: 6000 is fine


def test_export_tool_refuses_bad_overrides_configs_and_weights_in_one_line(tmp_path):
    """--opts / config errors were yacs' KeyError / AssertionError tracebacks; --weights went through
    detectron2's checkpointer, which unpickles .pkl files and loads a checkpoint of another model
    with a logged warning (the export then held random weights)."""
    import os
    import pickle

    import fbnet_zoo
    from fbnet_zoo.checkpoints import CheckpointError
    from fbnet_zoo.detection.d2.export import load_detector, load_detector_weights

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = os.path.join(repo, "model_configs", "detection", "faster_rcnn_fbnetv3a_C4.yaml")
    with pytest.raises(DetectionError, match=r"--opts MODEL.FBNET.NOSUCH 1: Non-existent key: MODEL.FBNET.NOSUCH"):
        load_detector(config, opts=["MODEL.FBNET.NOSUCH", "1"])
    with pytest.raises(DetectionError, match=r"--opts MODEL.FBNET.NORM: Override list has odd length"):
        load_detector(config, opts=["MODEL.FBNET.NORM"])
    arch_yaml = tmp_path / "arch.yaml"                                # an arch spec, not a detectron2 config
    fbnet_zoo.get_spec("FBNetV3-A").save_yaml(str(arch_yaml))
    with pytest.raises(DetectionError, match=r"arch.yaml: Non-existent config key: name"):
        load_detector(str(arch_yaml))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1))
    other = tmp_path / "classifier.pth"                               # a checkpoint of another model
    torch.save({"model": {"stages.0.weight": torch.zeros(4, 3, 1, 1)}}, other)
    with pytest.raises(DetectionError, match=r"classifier.pth does not fit this detector: missing 2 key\(s\): "
                                             r"0.bias, 0.weight; unexpected 1 key\(s\): stages.0.weight"):
        load_detector_weights(model, str(other))
    evil = tmp_path / "evil.pkl"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    with open(evil, "wb") as f:
        pickle.dump({"model": Payload()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="could run code"):
        load_detector_weights(model, str(evil))
    assert not (tmp_path / "ran").exists()
    good = tmp_path / "good.pth"
    torch.save({"model": {k: torch.ones_like(v) for k, v in model.state_dict().items()}, "iteration": 3}, good)
    load_detector_weights(model, str(good))
    assert all(bool((v == 1).all()) for v in model.state_dict().values())


def test_export_tool_writes_an_int8_fpn_detector(tmp_path, capsys):
    """tools/export.py --detector on the shipped FPN config: the whole FPN int8 in one file."""
    import importlib.util
    import os

    from detectron2.checkpoint import DetectionCheckpointer
    from PIL import Image

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("fbnet_export_tool_fpn", os.path.join(repo, "tools", "export.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    # image files like the ones the random model's BN statistics come from (its proposals stay boxes)
    images = tmp_path / "images"
    images.mkdir()
    for s in range(3):
        pixels = image(160, 224, seed=s).permute(1, 2, 0).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(images / f"{s}.png")
    images = str(images)
    config = os.path.join(repo, "model_configs", "detection", "faster_rcnn_fbnetv3g_fpn.yaml")
    opts = ["MODEL.FBNET.ARCH", "FBNetV3-A", *[str(v) for v in FPN_FAST], "INPUT.MIN_SIZE_TEST", "160",
            "INPUT.MAX_SIZE_TEST", "224", "MODEL.RPN.PRE_NMS_TOPK_TEST", "1000"]  # the config's: capped
    cfg, model = fpn_detector("faster_rcnn_fbnetv3g_fpn.yaml")
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("random")  # randomised: no score ties
    assert tool.main(["--detector", config, "--weights", str(tmp_path / "random.pth"), "--format", "int8",
                      "--calibration", images, "--calibration-images", "2", "--out", str(tmp_path / "out") + os.sep,
                      "--opts", *opts]) == 0
    printed = capsys.readouterr().out
    assert "RPN pre-NMS top-k 200, int8 parts: backbone, rpn_head, box_head" in printed
    path = tmp_path / "out" / "faster_rcnn_fbnetv3g_fpn_int8.ts"
    loaded = torch.jit.load(str(path))
    assert any(n.kind() == "quantized::add" for n in loaded.graph.findAllNodes("quantized::add"))  # FPN top-down
    with torch.no_grad():
        boxes, classes, scores, size = loaded(image(176, 240, seed=5))
    assert boxes.shape == (len(classes), 4) and len(scores) == len(classes) > 0
