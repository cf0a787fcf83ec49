"""Analytic FLOPs/params are exact: equal to the reference numbers and to fvcore's trace."""

import numpy as np
import pytest
import torch

import fbnet_zoo
from fbnet_zoo import count_flops, count_params, fvcore_flops
from fbnet_zoo.random_specs import random_spec

ZOO = ["FBNetV3-A", "FBNetV3-B", "FBNetV3-C", "FBNetV3-D", "FBNetV3-E", "FBNetV3-F", "FBNetV3-G"]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_matches_reference_params_and_fvcore_flops(name, reference_archs):
    ref = reference_archs[name]["reference_1000_classes"]
    model = fbnet_zoo.build_model(name)
    assert count_params(name) == ref["params"]
    assert sum(p.numel() for p in model.parameters()) == ref["params"]
    assert count_flops(name) == ref["fvcore_flops_at_input_size"]
    assert fvcore_flops(model) == ref["fvcore_flops_at_input_size"]


@pytest.mark.parametrize("name", ZOO)
def test_analytic_flops_equal_fvcore_at_other_sizes(name):
    model = fbnet_zoo.build_model(name, num_classes=10)
    for size in [(96, 96), (129, 129), (160, 97)]:  # odd sizes exercise padding/rounding
        assert count_flops(name, size, num_classes=10) == fvcore_flops(model, input_size=size), size


def test_analytic_equals_fvcore_on_random_specs():
    rng = np.random.default_rng(2024)
    checked = 0
    while checked < 50:
        spec = random_spec(rng, name=f"random{checked}")
        try:
            expected = count_flops(spec, num_classes=7)
        except fbnet_zoo.SpecError:  # input too small for this many strides: drawn again
            continue
        model = fbnet_zoo.FBNet(spec, num_classes=7)
        assert expected == fvcore_flops(model), spec.to_yaml()
        assert count_params(spec, num_classes=7) == sum(p.numel() for p in model.parameters())
        checked += 1


def test_no_classifier_and_per_stage_breakdown():
    c = fbnet_zoo.complexity("FBNetV3-A", num_classes=0)
    model = fbnet_zoo.build_model("FBNetV3-A", num_classes=0)
    assert c.params == sum(p.numel() for p in model.parameters())
    # the headless forward pools the 1984 x 1 x 1 head output once more: 1 flop per element
    assert sum(s["flops"] for s in c.stages.values()) + 1984 == c.flops
    assert c.stages["stage5"]["h"] == 6  # dw_padding 0 on the stride-2 block: 13 -> 6, not 7


def test_bad_input_size_is_named():
    with pytest.raises(fbnet_zoo.SpecError, match="input_size"):
        count_flops("FBNetV3-A", input_size=0)
    with pytest.raises(fbnet_zoo.SpecError, match="too small"):
        count_flops("FBNetV3-A", input_size=8)
    with pytest.raises(fbnet_zoo.SpecError, match=r"input_size\[0\]: -1 is below the minimum 1"):  # was torch's error
        fvcore_flops(torch.nn.Conv2d(3, 3, 3), input_size=-1)


@pytest.mark.parametrize("name", fbnet_zoo.list_models())
def test_headless_counts_equal_fvcore_for_every_zoo_model(name):
    """num_classes=0: the forward pools the last map; count_flops counts that pool as fvcore does
    (before the fix FBNetV3-A was 367,761,448 analytic vs fvcore's 367,763,432)."""
    model = fbnet_zoo.build_model(name, num_classes=0)
    size = model.spec.input_size
    assert count_flops(name, num_classes=0) == fvcore_flops(model, input_size=size)
    assert count_params(name, num_classes=0) == sum(p.numel() for p in model.parameters())


def test_headless_counts_equal_fvcore_without_a_pooled_head():
    rng = np.random.default_rng(7)
    checked = 0
    while checked < 10:
        spec = random_spec(rng, name=f"headless{checked}", max_stages=4)
        if spec.has_pool_head:
            spec = spec.replace(stages=spec.stages[:-1])
        try:
            expected = count_flops(spec, num_classes=0)
        except fbnet_zoo.SpecError:
            continue
        assert expected == fvcore_flops(fbnet_zoo.FBNet(spec, num_classes=0)), spec.to_yaml()
        checked += 1
