"""Detector quantization-aware training through tools/train_net.py --qat, on the toy COCO set
(skipped where detectron2 is not installed; CI has none): fp32 weights loaded, the FBNet parts
prepared for QAT (fake-quant, conv-BN fused), a few training iterations that change the QAT
weights, then the int8 detector converted, evaluated with COCOEvaluator and exported to one
TorchScript file that runs and equals it."""

import importlib.util
import os

import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (it is not on PyPI; see README: Detection)")

from fbnet_zoo.detection.toy_data import make_toy_coco  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "model_configs", "detection", "faster_rcnn_fbnetv3a_C4.yaml")


def _train_net():
    spec = importlib.util.spec_from_file_location("fbnet_train_net_qat", os.path.join(REPO, "tools", "train_net.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # ~40 s idle, 80 s on the shared machine: QAT graphs, 3 iterations, two evaluations, export
def test_train_net_qat_trains_converts_evaluates_and_exports(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    train_net = _train_net()
    make_toy_coco(str(tmp_path / "toy"), num_images=4, image_size=(96, 96))
    small = ["INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "96",
             "INPUT.MAX_SIZE_TEST", "128", "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "SOLVER.IMS_PER_BATCH", "2",
             "SOLVER.WARMUP_ITERS", "1", "SOLVER.BASE_LR", "0.01", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    args = train_net.build_parser().parse_args(
        ["--config-file", CONFIG, "--toy-coco", str(tmp_path / "toy"), "--qat", "OUTPUT_DIR", str(tmp_path / "qat"),
         "SOLVER.MAX_ITER", "3", "QUANTIZATION.QAT.FREEZE_BN_ITER", "2", "QUANTIZATION.QAT.FREEZE_OBSERVER_ITER", "3",
         "SOLVER.CHECKPOINT_PERIOD", "100000", *small])
    cfg = train_net.setup(args)
    assert cfg.QUANTIZATION.QAT.ENABLED

    # fp32 weights to start from: a saved (random) model; QAT must load them before preparing
    torch.manual_seed(1)
    float_model = build_model(cfg)  # detectron2's builder: the float detector
    DetectionCheckpointer(float_model, save_dir=str(tmp_path)).save("float")
    args.opts += ["MODEL.WEIGHTS", str(tmp_path / "float.pth")]
    prepared = train_net.Trainer.build_model(train_net.setup(args))
    fq = [m for m in prepared.modules() if isinstance(m, torch.ao.quantization.FakeQuantizeBase)]
    assert len(fq) > 100  # fake-quant on the trunk, RPN head and box head
    qat_conv = next(m for m in prepared.backbone.body.modules() if type(m).__name__.startswith("ConvBn"))
    first = next(m for m in float_model.backbone.body.modules() if isinstance(m, torch.nn.Conv2d))
    assert torch.equal(qat_conv.weight, first.weight)  # the float weights are in, before training

    res = train_net.main(args)
    assert set(res) == {"qat", "int8", "int8_export"}
    assert "AP" in res["int8"]["bbox"]
    ts = torch.jit.load(res["int8_export"])
    x = torch.rand(3, 96, 128) * 255
    with torch.no_grad():
        out = ts(x)
    assert out[0].shape[-1] == 4 and out[0].shape[0] == out[1].shape[0]


def test_prepare_train_step_convert_detector():
    """The library path without the trainer: prepare_detector_qat -> one SGD step on a
    Faster R-CNN loss (QAT weights change, fake-quant everywhere) -> late-QAT switches ->
    convert_detector_qat: every FBNet part int8, and the converted detector detects."""
    from detectron2.structures import Boxes, Instances
    from test_detection_deploy import image, randomised

    from fbnet_zoo.detection import DetectionError
    from fbnet_zoo.detection.d2.quantization import (convert_detector_qat, freeze_detector_qat, int8_parts,
                                                     prepare_detector_qat)

    cfg, model = randomised("FBNetV3-A-d2go:faster_rcnn_c4", **{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.01})
    qat = prepare_detector_qat(model, image(224, 320))
    assert qat.training and not model.training  # a copy
    body = qat.backbone.body
    assert any(type(m).__name__.startswith("ConvBn") for m in body.modules())
    before = next(m for m in body.modules() if type(m).__name__.startswith("ConvBn")).weight.detach().clone()
    gt = Instances((224, 320), gt_boxes=Boxes(torch.tensor([[20.0, 30.0, 120.0, 150.0], [150.0, 40.0, 300.0, 200.0]])),
                   gt_classes=torch.tensor([0, 1]))
    opt = torch.optim.SGD([p for p in qat.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    from detectron2.utils.events import EventStorage

    with EventStorage(0):  # detectron2's training forward logs into one
        losses = qat([{"image": image(224, 320, seed=3), "instances": gt}])
    sum(losses.values()).backward()
    opt.step()
    after = next(m for m in body.modules() if type(m).__name__.startswith("ConvBn")).weight
    assert not torch.equal(before, after)
    freeze_detector_qat(qat, bn=True, observers=True)
    int8 = convert_detector_qat(qat)
    assert int8_parts(int8) == ["backbone", "rpn_head", "box_head"]
    with torch.no_grad():
        out = int8.inference([{"image": image(240, 320, seed=7)}], do_postprocess=False)[0]
    assert len(out) > 0
    with pytest.raises(DetectionError, match="no QAT part"):
        convert_detector_qat(int8)
