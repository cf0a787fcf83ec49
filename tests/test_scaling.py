"""The FBNetV3 family by scaling: A is B at 224; F and G are E compound-scaled."""

import math
import os

import pytest

import fbnet_zoo
from fbnet_zoo import count_flops, count_params, get_spec, scale
from fbnet_zoo.scaling import (FBNETV3_A_INPUT_SIZE, FBNETV3_COMPOUND, FBNETV3_PHI, CompoundScaling,
                               fit_compound, fitted_factors, scaled_repeats)
from fbnet_zoo.training.final import load_final_config

RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model_configs", "recipes")


def _rows(spec):
    return [r for s in spec.stages for r in s]


def test_a_is_b_at_224_by_resolution_only():
    b, a = get_spec("FBNetV3-B"), get_spec("FBNetV3-A")
    derived = scale(b, input_size=FBNETV3_A_INPUT_SIZE, name="A-derived")
    assert derived.stages == a.stages and derived.input_size == a.input_size == 224
    assert count_flops(derived, convention="paper") == count_flops(a, convention="paper") == 356598280
    assert count_params(derived, convention="paper") == count_params(b, convention="paper")
    # the resolution factor reaches the same spec through the rounding to multiples of 8
    assert scale(b, resolution=224 / 248).stages == a.stages


def test_stated_rule_is_what_the_fit_derives():
    rule, phi = fit_compound("FBNetV3-E", ["FBNetV3-F", "FBNetV3-G"])
    for f in ("alpha", "beta", "gamma"):
        assert getattr(rule, f) == pytest.approx(getattr(FBNETV3_COMPOUND, f), abs=5e-5)
    assert phi == pytest.approx(FBNETV3_PHI, abs=5e-5)
    assert rule.flops_base == pytest.approx(2.0)
    # phi is EfficientNet's: the paper-FLOPs ratio to E is 2^phi
    e = count_flops("FBNetV3-E", convention="paper")
    assert 2 ** phi["FBNetV3-G"] == pytest.approx(count_flops("FBNetV3-G", convention="paper") / e)


@pytest.mark.parametrize("name,flops_tol,params_tol,size", [
    ("FBNetV3-G", 0.025, 0.005, 320),  # -1.9% FLOPs, -0.1% params, same input size
    ("FBNetV3-F", 0.035, 0.105, 288),  # +2.8% FLOPs, -10.0% params: F widened E at ~its resolution
])
def test_derived_f_and_g_come_close_to_the_released_ones(name, flops_tol, params_tol, size):
    derived = FBNETV3_COMPOUND.apply("FBNetV3-E", FBNETV3_PHI[name], name=f"{name}-derived")
    released = get_spec(name)
    assert derived.input_size == size
    flops_err = count_flops(derived, convention="paper") / count_flops(released, convention="paper") - 1
    params_err = count_params(derived, convention="paper") / count_params(released, convention="paper") - 1
    assert abs(flops_err) < flops_tol and abs(params_err) < params_tol, (flops_err, params_err)
    # the head keeps its 1984 channels; every other width grows, rounded to the divisor
    for re, rd in zip(_rows(get_spec("FBNetV3-E")), _rows(derived)):
        if re.type == "ir_pool":
            assert rd.out_channels == 1984
        else:
            assert rd.out_channels % 8 == 0 and rd.out_channels >= re.out_channels
            assert rd.repeats >= re.repeats


def test_scaling_rules_reproduce_f_from_e_except_its_stem():
    e, f = get_spec("FBNetV3-E"), get_spec("FBNetV3-F")
    factors = fitted_factors(e, f)
    widened = scale(e, width=factors["width"], depth=factors["depth"], input_size=f.input_size)
    assert [r.repeats for r in _rows(widened)] == [r.repeats for r in _rows(f)]  # 7 -> 8, 5 -> 6, ones stay
    got, want = [r.out_channels for r in _rows(widened)], [r.out_channels for r in _rows(f)]
    assert got[1:] == want[1:] and (got[0], want[0]) == (32, 24)  # only F's stem stayed at E's 24


def test_repeats_rule():
    assert scaled_repeats(1, 1.4) == 1  # a first block stays one block
    assert [scaled_repeats(n, 1.11) for n in (3, 4, 5, 7)] == [3, 4, 6, 8]
    assert scaled_repeats(4, 0.2) == 1
    assert math.isclose(CompoundScaling(1.2, 1.1, 1.15).factors(0)["width"], 1.0)
    with pytest.raises(fbnet_zoo.SpecError, match="alpha: 0"):
        CompoundScaling(0, 1.1, 1.1)


@pytest.mark.parametrize("name", ["fbnetv3_f", "fbnetv3_g"])
def test_f_and_g_recipes_use_stochastic_depth_0_2(name):
    data = {"train.data_dir": "/data/imagenet"}  # required by the imagefolder dataset, given at run time
    config = load_final_config(os.path.join(RECIPES, f"{name}.yaml"), data)
    recipe = config.recipe
    assert recipe.drop_path == 0.2
    assert recipe.resolution == get_spec(name).input_size
    assert (recipe.epochs, recipe.warmup_epochs, recipe.lr_decay, recipe.ema) == (400, 5, 0.9875, True)
    # everything else is the shared final-training recipe
    final = load_final_config(os.path.join(RECIPES, "fbnetv3_final.yaml"), data)
    assert recipe.replace(drop_path=final.recipe.drop_path, resolution=final.recipe.resolution) == final.recipe
    assert config.train == final.train and config.sync_bn
