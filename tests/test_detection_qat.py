"""Detector quantization-aware training through tools/train_net.py --qat, on the toy COCO set
(skipped where detectron2 is not installed; CI has none): fp32 weights loaded, the FBNet parts
prepared for QAT (fake-quant, conv-BN fused), a few training iterations that change the QAT
weights, then the int8 detector converted, evaluated with COCOEvaluator and exported to one
TorchScript file that runs and equals it."""

import copy
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


FPN_CONFIG = os.path.join(REPO, "model_configs", "detection", "faster_rcnn_fbnetv3g_fpn.yaml")


@pytest.mark.slow  # ~40 s idle, 80 s on the shared machine: QAT graphs, 3 iterations, two evaluations, export
@pytest.mark.parametrize("config, opts", [
    pytest.param(CONFIG, [], id="C4"),
    # the shipped FPN config with the small FBNetV3-A trunk and a normed FPN (fused conv-BN in QAT)
    pytest.param(FPN_CONFIG, ["MODEL.FBNET.ARCH", "FBNetV3-A", "MODEL.FPN.NORM", "BN"], id="FPN")])
def test_train_net_qat_trains_converts_evaluates_and_exports(config, opts, tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from fbnet_zoo.detection.d2.quantization import part_slots

    train_net = _train_net()
    make_toy_coco(str(tmp_path / "toy"), num_images=4, image_size=(96, 96))
    small = ["INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "96",
             "INPUT.MAX_SIZE_TEST", "128", "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "SOLVER.IMS_PER_BATCH", "2",
             "SOLVER.WARMUP_ITERS", "1", "SOLVER.BASE_LR", "0.01", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    args = train_net.build_parser().parse_args(
        ["--config-file", config, "--toy-coco", str(tmp_path / "toy"), "--qat", "OUTPUT_DIR", str(tmp_path / "qat"),
         "SOLVER.MAX_ITER", "3", "QUANTIZATION.QAT.FREEZE_BN_ITER", "2", "QUANTIZATION.QAT.FREEZE_OBSERVER_ITER", "3",
         "SOLVER.CHECKPOINT_PERIOD", "100000", *small, *opts])
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
    trunk = getattr(*part_slots(prepared)["backbone"])  # C4: the trunk; FPN: the whole FPN graph
    qat_conv = next(m for m in trunk.modules() if type(m).__name__.startswith("ConvBn"))
    float_trunk = getattr(float_model.backbone, "bottom_up", float_model.backbone).body
    first = next(m for m in float_trunk.modules() if isinstance(m, torch.nn.Conv2d))
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


def test_qat_freezes_bn_from_the_default_iteration_on():
    """QUANTIZATION.QAT.FREEZE_BN_ITER defaults to 0 (README "Freezing BN": short QAT fine-tunes
    at small batch lose AP to live BN statistics; measured in benchmarks/detection_int8.py's
    freeze_bn_study), and the late-QAT hook applies it with d2go's semantics: BN frozen before
    iteration FREEZE_BN_ITER runs, ranges before FREEZE_OBSERVER_ITER, again after a resume."""
    from types import SimpleNamespace

    from detectron2.config import get_cfg
    from test_detection_deploy import image, randomised
    from torch.ao.nn.intrinsic.qat.modules.conv_fused import _ConvBnNd

    from fbnet_zoo.detection.d2.quantization import add_quantization_config, prepare_detector_qat, qat_schedule_hook

    q = add_quantization_config(get_cfg()).QUANTIZATION.QAT
    assert (q.FREEZE_BN_ITER, q.FREEZE_OBSERVER_ITER) == (0, -1)
    cfg, model = randomised("FBNetV3-A-d2go:faster_rcnn_c4")
    prepared = prepare_detector_qat(model, image(160, 224))

    def run(freeze_bn_iter, freeze_observer_iter, iters):
        """(BN frozen, observers on) seen by each iteration, as the trainer calls the hook (a fresh QAT copy)."""
        qat = copy.deepcopy(prepared)
        convbn = [m for m in qat.modules() if isinstance(m, _ConvBnNd)]
        fake = [m for m in qat.modules() if isinstance(m, torch.ao.quantization.FakeQuantizeBase)]
        assert len(convbn) > 50 and fake and not any(m.freeze_bn for m in convbn)
        hook = qat_schedule_hook(lambda: qat, freeze_bn_iter, freeze_observer_iter)
        hook.trainer = trainer = SimpleNamespace(iter=0)
        seen = []
        for it in iters:
            trainer.iter = it
            hook.before_step()
            seen.append((all(m.freeze_bn for m in convbn), all(bool(m.observer_enabled[0]) for m in fake)))
        return seen

    # the default: BN statistics frozen before the first iteration, ranges never frozen
    assert run(q.FREEZE_BN_ITER, q.FREEZE_OBSERVER_ITER, [0, 1]) == [(True, True)] * 2
    assert run(2, 3, range(5)) == [(False, True), (False, True), (True, True), (True, False), (True, False)]
    # resumed past both iterations: the switches (module flags, not in checkpoints) apply at once
    assert run(2, 3, [10]) == [(True, False)]


def test_train_net_qat_uses_the_default_freeze_bn_iter():
    # tools/train_net.py --qat on our config, and the authors' QAT config, freeze BN from iteration 0
    train_net = _train_net()
    cfg = train_net.setup(train_net.build_parser().parse_args(["--config-file", CONFIG, "--qat"]))
    assert cfg.QUANTIZATION.QAT.ENABLED and cfg.QUANTIZATION.QAT.FREEZE_BN_ITER == 0


def test_the_authors_qat_config_is_theirs_on_our_keys():
    # d2go configs/qat_faster_rcnn_fbnetv3a_C4.yaml: 50 iterations at 1e-4, 48 images, qnnpack,
    # observers off at 5, BN frozen at 7, plain BN (fusable), on their float FBNetV3-A C4 model
    train_net = _train_net()
    path = os.path.join(REPO, "model_configs", "detection", "authors", "qat_faster_rcnn_fbnetv3a_C4.yaml")
    cfg = train_net.setup(train_net.build_parser().parse_args(["--config-file", path]))
    q = cfg.QUANTIZATION
    assert (q.BACKEND, q.QAT.ENABLED, q.QAT.FREEZE_OBSERVER_ITER, q.QAT.FREEZE_BN_ITER) == ("qnnpack", True, 5, 7)
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH) == (1e-4, 50, 48)
    assert (cfg.MODEL.FBNET.ARCH, cfg.MODEL.FBNET.NORM, cfg.MODEL.FBNET.HEAD_NORM) == ("FBNetV3-A-d2go", "BN", "BN")
    assert cfg.MODEL.RPN.POST_NMS_TOPK_TEST == 30   # the float model's test settings are kept


@pytest.mark.slow  # ~50 s on the shared machine (load 4): QAT graphs of a Mask R-CNN FPN, export at three sizes
def test_prepare_train_step_convert_fpn_detector(tmp_path):
    """The same on the shipped Mask R-CNN FPN config (FBNetV3-A trunk, normed FPN): the whole
    FPN backbone is one QAT graph whose lateral / output convs are fused conv-BN modules that
    train; converted, every part is int8 and the one-file export equals the eager int8 model."""
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage
    from test_detection_deploy import assert_export_equals_eager, image
    from test_detection_int8 import fpn_detector

    from fbnet_zoo.detection.d2.quantization import (GraphBackbone, convert_detector_qat, export_int8_detector,
                                                     freeze_detector_qat, int8_parts, prepare_detector_qat)

    # every box kept: after one step on a random model the scores may all fall below 0.01
    cfg, model = fpn_detector("mask_rcnn_fbnetv3g_fpn.yaml", "FBNetV3-A", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)
    qat = prepare_detector_qat(model, image(160, 224))
    assert isinstance(qat.backbone, GraphBackbone)
    graph = qat.backbone.graph
    fpn_convs = {n.split(".")[0]: m for n, m in graph.named_modules()
                 if n.startswith(("fpn_lateral", "fpn_output")) and type(m).__name__ == "ConvBn2d"}
    assert len(fpn_convs) == 8  # res2..res5: a lateral and an output conv each, each fused with its BN
    before = fpn_convs["fpn_output2"].weight.detach().clone()
    masks = torch.zeros(1, 160, 224, dtype=torch.bool)
    masks[0, 30:150, 20:120] = True
    gt = Instances((160, 224), gt_boxes=Boxes(torch.tensor([[20.0, 30.0, 120.0, 150.0]])),
                   gt_classes=torch.tensor([1]), gt_masks=BitMasks(masks))
    opt = torch.optim.SGD([p for p in qat.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    torch.manual_seed(0)  # detectron2 samples anchors and RoIs for the losses: the same ones in any test order
    with EventStorage(0):
        losses = qat([{"image": image(160, 224, seed=3), "instances": gt}])
    assert {"loss_mask", "loss_rpn_cls"} <= set(losses)
    sum(losses.values()).backward()
    opt.step()
    assert not torch.equal(before, fpn_convs["fpn_output2"].weight)
    freeze_detector_qat(qat, bn=True, observers=True)
    int8 = convert_detector_qat(qat)
    assert int8_parts(int8) == ["backbone", "rpn_head", "box_head", "mask_head"]
    x = image(176, 240, seed=7)
    with torch.no_grad():
        out = int8.inference([{"image": x}], do_postprocess=False)[0]
    assert len(out) > 0
    export_int8_detector(int8, x, str(tmp_path / "qat_fpn.ts"))
    assert_export_equals_eager(int8, tmp_path / "qat_fpn.ts", sorted(out.get_fields()), ("pred_masks",), rtol=1e-4)
