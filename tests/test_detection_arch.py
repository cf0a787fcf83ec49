"""The detection split of FBNet specs (torch only, runs in CI): the authors' d2go variants
reproduce their block parameter counts exactly; C4 / FPN layout; head shapes."""

import json
import os

import pytest
import torch
from torch import nn

import fbnet_zoo
from fbnet_zoo.detection import c4_split, resolve_arch
from fbnet_zoo.detection.core import (MaskBody, build_fbnet, build_rows, mask_rows, mask_scale, rpn_rows,
                                      same_padding)

DATA = os.path.join(os.path.dirname(__file__), "data", "d2go_detection_archs.json")


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("key", ["FBNetV3_A", "FBNetV3_E", "FBNetV3_G"])
def test_d2go_variants_match_reference_block_params(key):
    with open(DATA) as f:
        ref = json.load(f)[key]["reference_block_params"]
    arch = resolve_arch(key.replace("_", "-") + "-d2go")
    model = build_fbnet(arch)
    trunk, box = c4_split(arch.spec)
    c_trunk = arch.spec.stage_channels()[f"stage{trunk[-1]}"]
    assert c_trunk == ref["trunk"]["out_channels"]
    assert sum(n_params(model.stages[i]) for i in trunk) == ref["trunk"]["params"]
    assert sum(n_params(model.stages[i]) for i in box) == ref["bbox"]["params"]
    assert arch.spec.stage_channels()[f"stage{box[-1]}"] == ref["bbox"]["out_channels"]
    rpn, c = build_rows(c_trunk, rpn_rows(arch, "c4", trunk[-1]), arch.spec.width_divisor, nn.BatchNorm2d)
    assert n_params(rpn) == ref["rpn"]["params"] and c == ref["rpn"]["out_channels"]


def test_d2go_variants_are_zoo_specs():
    names = fbnet_zoo.list_models("*d2go*")
    assert names == ["FBNetV3-A-d2go", "FBNetV3-E-d2go", "FBNetV3-G-d2go"]
    spec = fbnet_zoo.get_spec("fbnetv3_a_d2go")
    ir = [row for _, _, _, row in spec.blocks() if row.type == "ir"]
    assert all(r.act == "relu" and not r.dw_bn_act for r in ir)
    assert all(r.se_gate == "sigmoid" and r.se_from == "expanded" for r in ir if r.se)
    g = resolve_arch("FBNetV3-G-d2go")
    assert rpn_rows(g, "fpn", 3)[0].repeats == 1 and rpn_rows(g, "c4", 3)[0].repeats == 8


@pytest.mark.parametrize("name", ["FBNetV3-A-d2go", "FBNetV3-G-d2go", "FBNetV3-B"])
def test_mask_head_maps_14_to_28(name):
    arch = resolve_arch(name)
    for variant in ("c4", "fpn"):
        rows = mask_rows(arch, variant)
        head = MaskBody(64, rows, num_classes=5).eval()
        assert mask_scale(rows) == 2
        assert head(torch.zeros(2, 64, 14, 14)).shape == (2, 5, 28, 28)


def test_same_padding_keeps_parameters():
    arch = resolve_arch("FBNetV3-A")
    fpn = same_padding(arch)
    assert any(r.dw_padding for _, _, _, r in arch.spec.blocks())
    assert not any(r.dw_padding for _, _, _, r in fpn.spec.blocks())
    assert fbnet_zoo.count_params(arch.spec) == fbnet_zoo.count_params(fpn.spec)


def test_width_multiplier_and_divisor():
    a = resolve_arch("FBNetV3-A", width_multiplier=0.5)
    assert a.spec.stage_channels()["stage4"] < resolve_arch("FBNetV3-A").spec.stage_channels()["stage4"]
    assert resolve_arch("FBNetV3-A", width_divisor=16).spec.width_divisor == 16


def test_searched_style_archs_either_work_or_fail_clearly():
    """Random valid specs (every block option the builder has): a C4 detector builds and runs
    when the arch has stride-16 and stride-32 stages; otherwise a DetectionError says why."""
    import numpy as np

    from fbnet_zoo.detection import DetectionError
    from fbnet_zoo.detection.tv import fasterrcnn_fbnet
    from fbnet_zoo.random_specs import random_spec

    built = failed = 0
    for seed in range(80):
        if built >= 3 and failed >= 1:
            break
        spec = random_spec(np.random.default_rng(seed), name=f"rand{seed}", max_stages=5)
        try:
            model = fasterrcnn_fbnet(spec, num_classes=3, min_size=64, max_size=64, rpn_post_nms_top_n_test=8)
        except DetectionError as e:
            assert "stride-16" in str(e) or "stride-32" in str(e)
            failed += 1
            continue
        model.eval()
        with torch.no_grad():
            out = model([torch.rand(3, 64, 64)])[0]
        assert out["boxes"].shape[1] == 4
        built += 1
    assert built >= 3 and failed >= 1, (built, failed)
