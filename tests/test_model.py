"""The builder: named stage outputs, classifier options, scripting/export, scaling."""

import pytest
import torch

import fbnet_zoo
from fbnet_zoo import FBNet, complexity, scale


@pytest.mark.parametrize("name", ["FBNetV3-A", "FBNetV3-D", "FBNetV3-G"])
@pytest.mark.parametrize("size", [(64, 64), (97, 131), (224, 224)])
def test_feature_outputs_have_declared_channels_and_sizes(name, size):
    model = fbnet_zoo.build_model(name, num_classes=0).eval()
    spec = model.spec
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, *size), model.feature_names)
    expected = complexity(spec, size).stages
    assert list(feats) == model.feature_names == [f"res{k}" for k in range(1, 6)]
    strides = [f["stride"] for f in model.feature_info]
    assert strides == [2, 4, 8, 16, 32]
    # res{k} is the output of the last block at stride 2**k: here the last block of stage k
    assert [f["stage"] for f in model.feature_info] == [1, 2, 3, 4, 5]
    for info in model.feature_info:
        f = feats[info["name"]]
        stage = f"stage{info['stage']}"
        assert f.shape[1] == info["channels"] == spec.stage_channels()[stage]
        assert tuple(f.shape[2:]) == (expected[stage]["h"], expected[stage]["w"])
        # the reference archs' two dw_padding overrides each may shave a pixel off the nominal size
        for got, full in zip(f.shape[2:], size):
            assert -(-full // info["stride"]) - 2 <= got <= -(-full // info["stride"])


def test_forward_features_stops_at_the_deepest_feature_asked():
    model = fbnet_zoo.build_model("FBNetV3-A", num_classes=10).eval()
    x = torch.randn(2, 3, 96, 96)
    ran = []
    for i, stage in enumerate(model.stages):
        for block in stage:
            block.register_forward_hook(lambda m, a, out, i=i: ran.append(i))
    with torch.no_grad():
        part = model.forward_features(x, ["res4", "res2"])
    assert list(part) == ["res2", "res4"]
    assert sorted(set(ran)) == [0, 1, 2, 3, 4] and ran.count(4) == len(model.stages[4])  # stage 5 never ran
    assert part["res4"].shape[1] == model.feature_info[3]["channels"]
    with pytest.raises(fbnet_zoo.SpecError, match="res6.*available"):
        model.forward_features(x, ["res6"])


def test_forward_stages_is_a_deprecated_alias_and_features_match_forward():
    model = fbnet_zoo.build_model("FBNetV3-A", num_classes=10).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        with pytest.warns(DeprecationWarning, match="forward_features"):
            part = model.forward_stages(x, ["stage2", "stage4"])
        assert list(part) == ["stage2", "stage4"]
        assert torch.equal(part["stage4"], model.forward_features(x, ["res4"])["res4"])
        logits = model(x)
        pooled = model.forward_features(x)
    assert logits.shape == (2, 10) and pooled.shape == (2, 1984, 1, 1)
    assert torch.allclose(model.classifier.fc(pooled.flatten(1)), logits, atol=1e-5)


def test_no_classifier_returns_pooled_features_and_reset_classifier():
    model = fbnet_zoo.build_model("FBNetV3-B", num_classes=0).eval()
    assert model.classifier is None
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1984)
    model.reset_classifier(5)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_dropout_and_drop_path_are_training_only():
    model = fbnet_zoo.build_model("FBNetV3-A", num_classes=10, dropout=0.5, drop_path_rate=0.3)
    assert model.classifier.dropout.p == 0.5
    rates = [m.p for m in model.modules() if isinstance(m, fbnet_zoo.blocks.DropPath)]
    assert rates and max(rates) <= 0.3 and rates == sorted(rates)  # linear in depth
    x = torch.randn(4, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.allclose(a, b)


def test_expansion_one_has_no_expand_conv_and_residuals_where_shapes_allow():
    model = fbnet_zoo.build_model("FBNetV3-A")
    first_ir = model.stages[1][0]
    assert first_ir.pw is None and first_ir.residual
    assert not model.stages[2][0].residual  # stride 2
    assert model.stages[2][1].residual


@pytest.mark.parametrize("name", ["FBNetV3-A", "FBNetV3-E"])
def test_torchscript_and_torch_export(name):
    model = fbnet_zoo.build_model(name, num_classes=10).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.script(model)
        assert torch.allclose(scripted(x), expected, atol=1e-5)
        assert set(scripted.forward_stages(x)) == {f"stage{i}" for i in range(6)}
        exported = torch.export.export(model, (x,))
        assert torch.allclose(exported.module()(x), expected, atol=1e-5)


def test_norm_layer_override():
    model = fbnet_zoo.build_model("FBNetV3-A", norm_layer=lambda c: torch.nn.GroupNorm(4, c))
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_compound_scaling_respects_width_divisor():
    e = fbnet_zoo.get_spec("FBNetV3-E")
    big = scale(e, width=1.15, depth=1.2, resolution=272 / 264, name="E-up")
    assert big.input_size == 272 and big.name == "E-up"
    for row_e, row_b in zip((r for s in e.stages for r in s), (r for s in big.stages for r in s)):
        if row_e.type == "ir_pool":
            assert row_b.out_channels == row_e.out_channels  # the head keeps 1984
            continue
        assert row_b.out_channels % 8 == 0 and row_b.out_channels >= row_e.out_channels
        assert row_b.repeats >= row_e.repeats
    assert fbnet_zoo.count_flops(big) > fbnet_zoo.count_flops(e)
    small = scale("FBNetV3-B", resolution=224 / 248, name="B-down")
    assert small.stages == fbnet_zoo.get_spec("FBNetV3-A").stages and small.input_size == 224
    with pytest.raises(fbnet_zoo.SpecError, match="width: -1"):
        scale(e, width=-1)


def test_build_model_rejects_unknown_options():
    with pytest.raises(TypeError, match="drop_rate"):
        fbnet_zoo.build_model("FBNetV3-A", drop_rate=0.1)
    with pytest.raises(fbnet_zoo.SpecError, match="num_classes"):
        FBNet(fbnet_zoo.get_spec("FBNetV3-A"), num_classes=-1)
    with pytest.raises(fbnet_zoo.SpecError, match=r"dropout: 2.0 is outside \[0.0, 1.0\)"):  # was torch's ValueError
        fbnet_zoo.build_model("FBNetV3-A", dropout=2.0)


def test_fbnet_takes_a_spec_and_points_names_to_the_factory():
    with pytest.raises(fbnet_zoo.SpecError, match="build_model"):
        FBNet("FBNetV3-A")
