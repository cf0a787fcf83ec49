"""Deploying a detectron2 detector (skipped where detectron2 is not installed; CI has none).

The authors' FBNetV3-A C4 Faster / Mask R-CNN and the Keypoint R-CNN, every weight and BN
statistic random (so that folding a BN wrongly, or dropping one, changes the outputs), at
their real test size (240 x 320 image; the C4 configs test at 224-320): the deployed copy (BN
folded, the authors' RPN test top-k 1000 / 30) equals the eager model with that top-k, and its TorchScript
export, traced at one size, equals it at that size and at another (box decoding, NMS and
score threshold included)."""

import pytest
import torch

pytest.importorskip("detectron2", reason="detectron2 is not installed (it is not on PyPI; see README: Detection)")

from detectron2.modeling import build_model  # noqa: E402

from fbnet_zoo.detection import DetectionError  # noqa: E402
from fbnet_zoo.detection import d2  # noqa: E402
from fbnet_zoo.detection.d2.deploy import AUTHORS_C4_TEST_TOPK, deploy_detector, export_torchscript, instances_from_outputs  # noqa: E402


def randomised(source, seed=0, **opts):
    cfg = d2.d2go_config(source)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.01, "MODEL.FBNET.NORM", "BN", "MODEL.FBNET.HEAD_NORM", "BN"])
    for k, v in opts.items():
        cfg.merge_from_list([k, v])
    torch.manual_seed(seed)
    return cfg, randomise(build_model(cfg).eval(), seed)


def randomise(model, seed=0):
    """Every weight and BN statistic of a detector random (in place, returned)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point() or name.startswith("pixel_"):
                continue
            if "running_var" in name:
                t.uniform_(0.5, 1.5, generator=g)
            elif "running_mean" in name or name.endswith("bias"):
                t.normal_(0.0, 0.1, generator=g)
            elif t.dim() == 1:
                t.uniform_(0.75, 1.25, generator=g)
            elif "bbox_pred" in name or "anchor_deltas" in name:  # small deltas: boxes stay boxes
                t.normal_(0.0, 0.01, generator=g)
            else:
                t.normal_(0.0, (2.0 / t[0].numel()) ** 0.5, generator=g)
        # BN statistics of one pass over an image (so every layer sees a sane signal and the
        # heads score boxes apart), then perturbed: folding must use each BN's own numbers.
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for bn in norms:
            bn.train()
            bn.momentum = None
            bn.reset_running_stats()
        model.inference([{"image": image(240, 320, seed=99)}], do_postprocess=False)
        for bn in norms:
            bn.eval()
            bn.running_mean.add_(torch.randn(bn.running_mean.shape, generator=g) * 0.1 * bn.running_var.sqrt())
            bn.running_var.mul_(torch.rand(bn.running_var.shape, generator=g) * 0.5 + 0.75)
    return model


def image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand((3, h // 16, w // 16), generator=g) * 255
    return torch.nn.functional.interpolate(low[None], size=(h, w), mode="bilinear", align_corners=False)[0].round()


def close(a, b, what, rtol=1e-3):
    assert a.shape == b.shape, f"{what}: {tuple(a.shape)} vs {tuple(b.shape)}"
    assert a.numel(), f"{what}: nothing to compare"
    err = float((a.float() - b.float()).abs().max())
    assert err <= rtol * max(1.0, float(a.abs().max())), f"{what}: max difference {err:.3g}"


def assert_export_equals_eager(model, path, fields, extra, rtol=1e-3):
    """The TorchScript detector at ``path`` gives ``model``'s eager detections (``fields``; the
    ``extra`` ones compared too) at a size it was not traced at and at the authors' test size."""
    loaded = torch.jit.load(str(path))
    for h, w in ((240, 320), (224, 298)):
        x = image(h, w, seed=h)
        with torch.no_grad():
            eager = model.inference([{"image": x}], do_postprocess=False)[0]
            out = instances_from_outputs(loaded(x)[:-1], (h, w), fields)  # last output: the image size
        assert len(out) == len(eager) > 0
        assert torch.equal(out.pred_classes, eager.pred_classes)
        close(eager.pred_boxes.tensor, out.pred_boxes.tensor, f"exported boxes at {h}x{w}", rtol=rtol)
        close(eager.scores, out.scores, f"exported scores at {h}x{w}", rtol=rtol)
        for field in extra:
            close(eager.get(field), out.get(field), f"exported {field} at {h}x{w}", rtol=rtol)


CASES = [pytest.param("FBNetV3-A-d2go:faster_rcnn_c4", (), id="faster"),
         pytest.param("FBNetV3-A-d2go:mask_rcnn_c4", ("pred_masks",), id="mask", marks=pytest.mark.slow),  # ~100 s
         pytest.param("FBNetV3-A-dsmask-w075-d2go:keypoint_rcnn_c4", ("pred_keypoints",), id="keypoint")]


@pytest.mark.parametrize("source, extra", CASES)
def test_deployed_and_exported_detector_equal_eager(source, extra, tmp_path):
    cfg, model = randomised(source, **{"MODEL.RPN.POST_NMS_TOPK_TEST": 1000, "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000})
    deployed = deploy_detector(model, **AUTHORS_C4_TEST_TOPK)
    assert deployed.folded_bn > 50
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())
    assert (deployed.proposal_generator.pre_nms_topk[False], deployed.proposal_generator.post_nms_topk[False]) == \
        (1000, 30)
    assert model.proposal_generator.post_nms_topk[False] == 1000  # the original is untouched
    model.proposal_generator.post_nms_topk[False] = 30
    model.proposal_generator.pre_nms_topk[False] = 1000

    img = image(240, 320)
    with torch.no_grad():
        want = model.inference([{"image": img}], do_postprocess=False)[0]
        got = deployed.inference([{"image": img}], do_postprocess=False)[0]
    assert len(want) > 5
    assert torch.equal(want.pred_classes, got.pred_classes)
    close(want.pred_boxes.tensor, got.pred_boxes.tensor, "boxes")
    close(want.scores, got.scores, "scores")
    for field in extra:
        close(want.get(field), got.get(field), field)

    path = tmp_path / "detector.ts"
    export_torchscript(deployed, img, str(path))
    assert_export_equals_eager(deployed, path, sorted(want.get_fields()), extra)


def test_frozen_bn_folds_and_bad_proposals_are_refused():
    cfg, model = randomised("FBNetV3-A-d2go:faster_rcnn_c4", **{"MODEL.FBNET.FREEZE_AT": 2})
    from detectron2.layers import FrozenBatchNorm2d

    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    deployed = deploy_detector(model)
    assert not any(isinstance(m, (FrozenBatchNorm2d, torch.nn.BatchNorm2d)) for m in deployed.modules())
    img = image(224, 288)
    with torch.no_grad():
        a = model.inference([{"image": img}], do_postprocess=False)[0]
        b = deployed.inference([{"image": img}], do_postprocess=False)[0]
    close(a.pred_boxes.tensor, b.pred_boxes.tensor, "boxes")
    with pytest.raises(DetectionError, match="test_proposals: 0"):
        deploy_detector(model, test_proposals=0)
    with pytest.raises(DetectionError, match="pre_nms_topk: -1"):
        deploy_detector(model, pre_nms_topk=-1)
    with pytest.raises(DetectionError, match="GeneralizedRCNN"):
        deploy_detector(torch.nn.Conv2d(3, 3, 1))
