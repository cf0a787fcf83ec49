"""Key converters: timm's FBNetV3 reproduces exactly in our timm-variant archs; mobile_cv
(the authors' names, shared/reference/fbnetv3_a_modules.txt) round-trips with every tensor
accounted for; the block-level map is reusable for d2go's detection prefixes."""

import os
import re

import pytest
import torch
from torch import nn

import fbnet_zoo
from conftest import randomize_bn
from fbnet_zoo.blocks import Upsampled
from fbnet_zoo.converters import (CheckpointError, detect_format, mobile_cv_block_keys, mobile_cv_key_map,
                                  mobile_cv_to_ours, ours_to_mobile_cv, timm_key_map, timm_to_ours)

MODULES_TXT = os.path.join(os.path.dirname(__file__), "data", "fbnetv3_a_modules.txt")




@pytest.mark.parametrize("variant", ["b", "d", "g"])
def test_timm_weights_reproduce_timm_logits_at_two_sizes(variant):
    timm = pytest.importorskip("timm", reason="the timm converter is checked against timm itself")
    torch.manual_seed(0)
    ref = timm.create_model(f"fbnetv3_{variant}", num_classes=1000).eval()
    randomize_bn(ref)
    ours = fbnet_zoo.build_model(f"FBNetV3-{variant.upper()}-timm").eval()
    converted = timm_to_ours(ref.state_dict(), ours)
    assert len(converted) == len(ref.state_dict()) == len(ours.state_dict())
    ours.load_state_dict(converted, strict=True)
    g = torch.Generator().manual_seed(1)
    for size in (64, 96):  # two input sizes (small to keep the suite fast; any size works)
        x = torch.randn(1, 3, size, size, generator=g)
        with torch.no_grad():
            want, got = ref(x), ours(x)
        assert got.shape == want.shape == (1, 1000)
        assert torch.allclose(got, want, rtol=0, atol=1e-5), (size, (got - want).abs().max())


def test_timm_variant_specs_follow_timm_defaults():
    for v, size, stem in (("B", 224, 16), ("D", 224, 24), ("G", 240, 32)):
        spec = fbnet_zoo.get_spec(f"FBNetV3-{v}-timm")
        assert spec.input_size == size
        assert spec.stages[0][0].bias is False and spec.stages[0][0].out_channels == stem
        assert all(row.dw_padding is None for _, _, _, row in spec.blocks())


def test_timm_block_order_maps_across_different_stage_grouping():
    keys = timm_key_map("FBNetV3-B-timm", [f"blocks.{i}.{j}.x" for i, n in enumerate([2, 4, 5, 5, 6, 7, 1])
                                           for j in range(n)])
    # timm splits our stride-16 stage in two: our stage 4 block 5 (first 120-channel block) is timm's blocks.4.0
    assert keys["stages.4.5.pw.conv.weight"] == "blocks.4.0.conv_pw.weight"
    assert keys["stages.1.0.dw.conv.weight"] == "blocks.0.0.conv_dw.weight"       # expansion 1: timm's ds block
    assert keys["stages.1.0.pwl.bn.running_var"] == "blocks.0.0.bn2.running_var"
    assert keys["stages.6.0.pw.conv.weight"] == "blocks.6.0.conv.weight"
    assert keys["stages.6.0.pwl.conv.weight"] == "conv_head.weight"
    assert keys["stages.0.0.conv.weight"] == "conv_stem.weight"


def test_timm_checkpoint_for_another_arch_is_refused_with_block_counts():
    timm = pytest.importorskip("timm", reason="uses timm's key names")
    sd = timm.create_model("fbnetv3_b").state_dict()
    with pytest.raises(CheckpointError, match=r"has 34 blocks.*needs 3[0-9]|wrong architecture"):
        timm_to_ours(sd, "FBNetV3-G-timm")


def _reference_modules():
    """{mobile_cv module name: (kind, shape facts)} from the reference listing."""
    out = {}
    with open(MODULES_TXT) as f:
        for line in f:
            name, _, desc = line.strip().partition(": ")
            if desc.startswith("conv"):
                m = re.match(r"conv (\d+)->(\d+) k(\d+) s\d+ p\d+ g(\d+) bias=(\w+)", desc)
                cin, cout, k, g, bias = int(m[1]), int(m[2]), int(m[3]), int(m[4]), m[5] == "True"
                out[name] = ("conv", (cout, cin // g, k, k), bias)
            elif desc.startswith("bn"):
                out[name] = ("bn", (int(desc.split()[1]),), True)
    return out


def _reference_state_dict():
    """A random state dict keyed exactly as the reference checkpoint (names + shapes from the listing)."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for name, (kind, shape, bias) in _reference_modules().items():
        if kind == "conv":
            sd[f"{name}.weight"] = torch.randn(*shape, generator=g)
            if bias:
                sd[f"{name}.bias"] = torch.randn(shape[0], generator=g)
        else:
            for p in ("weight", "bias", "running_mean"):
                sd[f"{name}.{p}"] = torch.randn(*shape, generator=g)
            sd[f"{name}.running_var"] = torch.rand(*shape, generator=g) + 0.5
            sd[f"{name}.num_batches_tracked"] = torch.tensor(7)
    return sd


def test_mobile_cv_key_map_names_every_reference_module_with_its_shape():
    model = fbnet_zoo.build_model("FBNetV3-A")
    key_map = mobile_cv_key_map(model)
    own = model.state_dict()
    ref = _reference_state_dict()
    assert set(key_map.values()) == set(ref)                       # same names, nothing left over
    for ours_key, theirs_key in key_map.items():
        want = ref[theirs_key].shape
        got = own[ours_key].shape
        if theirs_key == "head.conv.weight":
            want = want[:2]                                         # 1x1 conv in mobile_cv, Linear here
        assert tuple(got) == tuple(want), (ours_key, theirs_key)


def test_mobile_cv_state_dict_round_trips_with_every_tensor_accounted_for():
    model = fbnet_zoo.build_model("FBNetV3-A")
    ref = _reference_state_dict()
    assert detect_format(ref) == "mobile_cv"
    ours = mobile_cv_to_ours(ref, model)
    assert len(ours) == len(ref)
    model.load_state_dict(ours, strict=True)                         # every key, every shape fits
    back = ours_to_mobile_cv(model.state_dict(), model)
    assert list(back) == list(ref) or set(back) == set(ref)
    for k, v in ref.items():
        assert back[k].shape == v.shape and torch.equal(back[k], v), k
    # and ours -> mobile_cv -> ours is the identity too
    again = mobile_cv_to_ours(back, model)
    assert all(torch.equal(again[k], v) for k, v in model.state_dict().items())


def test_mobile_cv_converter_names_unaccounted_and_missing_tensors():
    model = fbnet_zoo.build_model("FBNetV3-A")
    ref = _reference_state_dict()
    ref["backbone.stages.xif9_0.conv.weight"] = torch.zeros(1)
    del ref["backbone.stages.xif3_0.se.se.1.bias"]
    with pytest.raises(CheckpointError) as e:
        mobile_cv_to_ours(ref, model)
    assert "backbone.stages.xif9_0.conv.weight" in str(e.value)
    assert "backbone.stages.xif3_0.se.se.1.bias" in str(e.value)


def test_block_map_is_reusable_for_d2go_detection_prefixes():
    model = fbnet_zoo.FBNet({"name": "d2go-like", "input_size": 64, "stages": [
        [{"type": "conv", "out_channels": 8, "stride": 2, "act": "relu"}],
        [{"type": "ir", "out_channels": 16, "expansion": 4, "kernel": 3, "se": True, "se_from": "expanded",
          "se_gate": "sigmoid", "act": "relu", "dw_bn_act": False},
         {"type": "ir", "out_channels": 8, "expansion": 2, "upsample": 2, "act": "relu"}]]}, num_classes=0)
    block = model.stages[1][0]
    m = mobile_cv_block_keys(block, "trunk.1.0.", "backbone.body.trunk1.fbnetv2_1_0.")
    assert m["trunk.1.0.dw.conv.weight"] == "backbone.body.trunk1.fbnetv2_1_0.dw.conv.weight"
    assert m["trunk.1.0.se.reduce.weight"] == "backbone.body.trunk1.fbnetv2_1_0.se.se.0.conv.weight"
    assert m["trunk.1.0.se.expand.bias"] == "backbone.body.trunk1.fbnetv2_1_0.se.se.1.bias"
    assert not any(".dw.bn." in k for k in m)                      # no BN after the depthwise conv
    assert set(k[len("trunk.1.0."):] for k in m) == set(block.state_dict())
    up = model.stages[1][1]
    assert isinstance(up, Upsampled)
    m2 = mobile_cv_block_keys(up, "", "roi_heads.mask_head.mask_fcn.fbnetv2_0_1.")
    assert m2["block.pwl.bn.running_mean"] == "roi_heads.mask_head.mask_fcn.fbnetv2_0_1.pwl.bn.running_mean"
    assert len(m2) == len(up.state_dict())
    with pytest.raises(CheckpointError, match="not an FBNet block"):
        mobile_cv_block_keys(nn.Linear(2, 2), "x.", "y.")


def test_detect_format():
    assert detect_format({"stages.0.0.conv.weight": torch.zeros(1)}) == "ours"
    assert detect_format({"module.conv_stem.weight": torch.zeros(1), "module.blocks.0.0.x": torch.zeros(1)}) == "timm"
    with pytest.raises(CheckpointError, match="cannot tell its format"):
        detect_format({"foo.weight": torch.zeros(1)})
