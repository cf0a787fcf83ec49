"""The authors' d2go detectors, built by d2go's own code, reproduced by ours.

For every d2go FBNetV3 detection model the zoo has checkpoint sources for (Faster / Mask
R-CNN FBNetV3-A C4 and FBNetV3-G FPN), d2go's model-zoo config is built with detectron2's
``build_model`` through d2go's config machinery, every tensor and BN statistic is
randomised, the weights are saved as d2go saves them (``{"model": state_dict}``) and loaded
into our adapters with the authors' config (model_configs/detection/authors/) and no
overrides. Backbone features, RPN outputs, box-head outputs, final detections and mask
logits must agree to float tolerance on a real-sized image; our weights written back in
d2go's layout must load into d2go's model with nothing missing or left over.

Run: ``D2GO_CONFIGS=<d2go checkout>/configs pytest tests/test_detection_d2go_parity.py``.
Needs d2go + mobile_cv (official repositories, ``pip install --no-deps``; their model code
imports with D2GO_IMPORT_SKIP_INITIALIZATION=1) and OpenCV (detectron2's PointRend, which
d2go's meta-arch module imports); skipped otherwise.
"""

import logging
import os
import sys

import pytest
import torch

os.environ.setdefault("D2GO_IMPORT_SKIP_INITIALIZATION", "1")
pytest.importorskip("detectron2", reason="detectron2 is not installed (it is not on PyPI; see README: Detection)")
pytest.importorskip("cv2", reason="OpenCV is not installed (d2go's model code imports detectron2's PointRend)")
# mobile_cv asks sys.stdin for its file descriptor at import, which pytest's captured stdin lacks.
_captured_stdin = sys.stdin
sys.stdin = sys.__stdin__ if sys.__stdin__ is not None else open(os.devnull)
try:
    pytest.importorskip("mobile_cv", reason="mobile_cv is not installed (the authors' FBNet code; see README: Detection)")
    pytest.importorskip("d2go.modeling", reason="d2go is not installed (the authors' detection code; see README: Detection)")
finally:
    sys.stdin = _captured_stdin

from d2go.config import CfgNode as D2GoCfgNode  # noqa: E402
from d2go.modeling.backbone.fbnet_cfg import add_fbnet_v2_default_configs  # noqa: E402
from d2go.modeling.ema import add_model_ema_configs  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from fbnet_zoo.detection import d2  # noqa: E402

logger = logging.getLogger(__name__)
from fbnet_zoo.detection.convert import ours_to_d2go  # noqa: E402

# d2go's model-zoo configs live in its repository's configs/ folder, which pip does not install.
D2GO_CONFIGS = os.environ.get("D2GO_CONFIGS", "")

# (G FPN runs at 800 x 1066, tens of seconds on one CPU thread: slow)
CASES = [
    ("faster_rcnn_fbnetv3a_C4.yaml", "FBNetV3-A-d2go:faster_rcnn_c4", {"res4": "trunk3"}),
    ("mask_rcnn_fbnetv3a_C4.yaml", "FBNetV3-A-d2go:mask_rcnn_c4", {"res4": "trunk3"}),
    pytest.param("faster_rcnn_fbnetv3g_fpn.yaml", "FBNetV3-G-d2go:faster_rcnn_fpn", None, marks=pytest.mark.slow),
    pytest.param("mask_rcnn_fbnetv3g_fpn.yaml", "FBNetV3-G-d2go:mask_rcnn_fpn", None, marks=pytest.mark.slow),
]


def d2go_model(config):
    """d2go's own model for one of its model-zoo configs (random init, eval mode)."""
    path = os.path.join(D2GO_CONFIGS, config)
    if not D2GO_CONFIGS or not os.path.exists(path):
        pytest.skip(f"d2go's model-zoo config {config} not found: set D2GO_CONFIGS to the configs/ folder of a "
                    f"d2go checkout (now {D2GO_CONFIGS!r})")
    cfg = D2GoCfgNode.cast_from_other_class(get_cfg())
    add_fbnet_v2_default_configs(cfg)
    add_model_ema_configs(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    return cfg, build_model(cfg).eval()


def randomise(model, seed, inputs):
    """Every parameter and BN statistic random, so that a swapped or missed tensor changes the
    outputs. Weights are variance-preserving; BN statistics are those of one inference pass
    over ``inputs`` (computed with batch statistics, so every layer sees a sane signal and
    the RPN proposes real boxes), then perturbed at random."""
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point() or "running_" in name:
                continue
            if name.endswith("bias"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.dim() == 1:  # norm weight
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif "bbox_pred" in name or "rpn_regressor" in name:  # box deltas small: boxes stay boxes
                t.copy_(torch.randn(t.shape, generator=g) * 0.01)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5)
        model.eval()
        for bn in norms:
            bn.train()
            bn.momentum = None  # cumulative average: after one pass, that pass's statistics
            bn.reset_running_stats()
        model(inputs)
        for bn in norms:
            bn.eval()
            bn.running_mean.add_(torch.randn(bn.running_mean.shape, generator=g) * 0.1 * bn.running_var.sqrt())
            bn.running_var.mul_(torch.rand(bn.running_var.shape, generator=g) * 0.5 + 0.75)
            bn.num_batches_tracked.fill_(int(torch.randint(1, 10 ** 6, (1,), generator=g)))


class Taps:
    """Forward hooks that keep the outputs of the named submodules of a detector."""

    ROLES = {"backbone": "backbone", "rpn_head": "proposal_generator.rpn_head", "box_head": "roi_heads.box_head",
             "box_predictor": "roi_heads.box_predictor", "mask_logits": "roi_heads.mask_head.predictor"}

    def __init__(self, model):
        self.out = {}
        modules = dict(model.named_modules())
        for role, path in self.ROLES.items():
            if path in modules:
                modules[path].register_forward_hook(self._hook(role))

    def _hook(self, role):
        def hook(module, args, output):
            self.out[role] = output
        return hook


def flat(x):
    if isinstance(x, torch.Tensor):
        return [x.flatten(1) if x.dim() > 1 else x]
    if isinstance(x, dict):
        return [t for k in x for t in flat(x[k])]
    return [t for item in x for t in flat(item)]


def assert_close(a, b, what):
    ta, tb = flat(a), flat(b)
    assert len(ta) == len(tb), what
    for x, y in zip(ta, tb):
        assert x.shape == y.shape, f"{what}: {tuple(x.shape)} vs {tuple(y.shape)}"
        assert x.numel(), f"{what}: empty, nothing compared"
        scale = max(float(y.abs().max()), 1.0)
        err = float((x - y).abs().max())
        assert err <= 1e-4 * scale, f"{what}: max abs difference {err:.3g} (scale {scale:.3g})"
        logger.info("%s: max abs difference %.3g (largest value %.3g)", what, err, scale)


def image(cfg, seed=0):
    """A real-sized image (the config's test size: 224x320 for C4, 800x1066 for FPN), BGR uint8
    with smooth structure so that proposals and detections are not all noise."""
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.INPUT.MIN_SIZE_TEST, int(cfg.INPUT.MIN_SIZE_TEST * 4 / 3)
    low = torch.rand((3, h // 16, w // 16), generator=g) * 255
    img = torch.nn.functional.interpolate(low[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return img.round().to(torch.uint8)


@pytest.mark.parametrize("config, source, feature_names", CASES,
                         ids=["A_C4_faster", "A_C4_mask", "G_FPN_faster", "G_FPN_mask"])
def test_d2go_model_outputs_are_reproduced(config, source, feature_names, tmp_path):
    torch.manual_seed(0)
    d2go_cfg, theirs = d2go_model(config)
    img = image(d2go_cfg)
    inputs = [{"image": img, "height": img.shape[1], "width": img.shape[2]}]
    randomise(theirs, seed=1, inputs=inputs)
    path = tmp_path / "model_final.pth"
    torch.save({"model": theirs.state_dict(), "iteration": 0}, path)  # as d2go's checkpointer writes it

    cfg = d2.d2go_config(source)  # the authors' config, picked from the source: no overrides
    cfg.MODEL.DEVICE = "cpu"
    for key in ("INPUT.FORMAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "MODEL.ANCHOR_GENERATOR.SIZES",
                "MODEL.RPN.PRE_NMS_TOPK_TEST", "MODEL.RPN.POST_NMS_TOPK_TEST", "MODEL.ROI_HEADS.IN_FEATURES",
                "MODEL.FPN.OUT_CHANNELS", "MODEL.FPN.NORM", "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST",
                "MODEL.MASK_ON", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION"):
        ours_v, theirs_v = cfg, d2go_cfg
        for part in key.split("."):
            ours_v, theirs_v = ours_v[part], theirs_v[part]
        if key == "MODEL.ROI_HEADS.IN_FEATURES" and feature_names:
            ours_v = [feature_names.get(n, n) for n in ours_v]
        if key.startswith("MODEL.FPN") and "FPN" not in d2go_cfg.MODEL.BACKBONE.NAME.upper():
            continue
        assert list(ours_v) == list(theirs_v) if isinstance(ours_v, (list, tuple)) else ours_v == theirs_v, key

    ours = build_model(cfg).eval()
    result = d2.load_d2go_weights(ours, str(path), cache=str(tmp_path / "cache"))
    assert result.format == "d2go_detection"
    n_theirs = len(theirs.state_dict())
    assert len(ours.state_dict()) == n_theirs  # every tensor accounted for (strict load)

    taps_ours, taps_theirs = Taps(ours), Taps(theirs)
    with torch.no_grad():
        det_ours = ours(inputs)[0]["instances"]
        det_theirs = theirs(inputs)[0]["instances"]
    feats_ours, feats_theirs = taps_ours.out["backbone"], taps_theirs.out["backbone"]
    names = feature_names or {n: n for n in feats_ours}
    assert_close([feats_ours[n] for n in names], [feats_theirs[m] for m in names.values()], "backbone features")
    assert_close(taps_ours.out["rpn_head"], taps_theirs.out["rpn_head"], "RPN objectness logits / deltas")
    assert_close(taps_ours.out["box_head"], taps_theirs.out["box_head"], "box head features")
    assert_close(taps_ours.out["box_predictor"], taps_theirs.out["box_predictor"], "box scores / deltas")
    assert len(det_theirs) > 0, "no detections to compare: the random model should give some"
    assert len(det_ours) == len(det_theirs)
    assert_close(det_ours.pred_boxes.tensor, det_theirs.pred_boxes.tensor, "detected boxes")
    assert_close(det_ours.scores, det_theirs.scores, "detection scores")
    assert torch.equal(det_ours.pred_classes, det_theirs.pred_classes)
    if cfg.MODEL.MASK_ON:
        assert_close(taps_ours.out["mask_logits"], taps_theirs.out["mask_logits"], "mask logits")
        assert torch.equal(det_ours.pred_masks, det_theirs.pred_masks)

    # the reverse direction: our weights in d2go's layout load strictly into d2go's model
    fresh_cfg, fresh = d2go_model(config)
    missing, unexpected = fresh.load_state_dict(ours_to_d2go(ours.state_dict(), ours), strict=True)
    assert not missing and not unexpected
    for k, v in theirs.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
