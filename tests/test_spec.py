"""Specs are data: exact round trips, and every invalid field is named in the error."""

import json

import pytest

import fbnet_zoo
from fbnet_zoo import ArchSpec, BlockSpec, SpecError, load_spec


def small_dict(**row_changes):
    row = {"type": "ir", "out_channels": 16, "repeats": 2, "stride": 2, "kernel": 3, "expansion": 4}
    row.update(row_changes)
    return {"name": "tiny", "input_size": 32,
            "stages": [[{"type": "conv", "out_channels": 8, "stride": 2}], [row]]}


def test_zoo_yaml_transcribes_the_reference_tables(reference_archs):
    for name, ref in reference_archs.items():
        spec = fbnet_zoo.get_spec(name)
        assert spec.input_size == ref["input_size"] and spec.width_divisor == ref["width_divisor"]
        assert len(spec.stages) == len(ref["stages"])
        for stage, ref_stage in zip(spec.stages, ref["stages"]):
            assert len(stage) == len(ref_stage)
            for row, ref_row in zip(stage, ref_stage):
                for key, value in ref_row.items():
                    got = getattr(row, key)
                    if key == "dw_padding":
                        got = list(got) if got is not None else None
                    if key in ("kernel", "se") and row.type == "ir_pool":
                        continue
                    assert got == value, (name, key)


@pytest.mark.parametrize("name", ["FBNetV3-A", "FBNetV3-C", "FBNetV3-G"])
def test_round_trip_spec_yaml_spec_is_exact(name, tmp_path):
    spec = fbnet_zoo.get_spec(name)
    assert ArchSpec.from_yaml(spec.to_yaml()) == spec
    assert ArchSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    path = tmp_path / "arch.yaml"
    spec.save_yaml(path)
    assert load_spec(str(path)) == spec
    assert load_spec(spec.to_dict()) == spec


def test_all_block_options_round_trip():
    row = BlockSpec("ir", 24, repeats=3, stride=2, kernel=5, expansion=4.5, se=True, act="relu",
                    se_gate="sigmoid", se_from="expanded", se_ratio=0.125, dw_padding=(1, 2),
                    dw_bn_act=False, upsample=2)
    spec = ArchSpec("opts", 64, ((BlockSpec("conv", 8, stride=2, bias=True),), (row,)))
    assert ArchSpec.from_yaml(spec.to_yaml()) == spec


def test_user_may_pass_name_path_or_dict(tmp_path):
    a = fbnet_zoo.get_spec("FBNetV3-A")
    for alias in ["FBNetV3-A", "fbnetv3_a", "FBNetV3_A", " fbnetv3-a "]:
        assert load_spec(alias) == a
    path = tmp_path / "mine.yaml"
    path.write_text(a.replace(name="Mine").to_yaml())
    assert fbnet_zoo.build_model(str(path)).spec.name == "Mine"
    assert fbnet_zoo.build_model(small_dict()).spec.name == "tiny"


# Each validation rule: the message names the field path and the bad value.
@pytest.mark.parametrize("change, field, value", [
    ({"type": "mbconv"}, "stages[1][0].type", "mbconv"),
    ({"kernel": 4}, "stages[1][0].kernel", "4"),
    ({"kernel": 0}, "stages[1][0].kernel", "0"),
    ({"out_channels": 0}, "stages[1][0].out_channels", "0"),
    ({"out_channels": -8}, "stages[1][0].out_channels", "-8"),
    ({"stride": 3}, "stages[1][0].stride", "3"),
    ({"repeats": 0}, "stages[1][0].repeats", "0"),
    ({"expansion": 0}, "stages[1][0].expansion", "0"),
    ({"expansion": "four"}, "stages[1][0].expansion", "four"),
    ({"act": "gelu"}, "stages[1][0].act", "gelu"),
    ({"se": "yes"}, "stages[1][0].se", "yes"),
    ({"se_gate": "tanh"}, "stages[1][0].se_gate", "tanh"),
    ({"se_from": "output"}, "stages[1][0].se_from", "output"),
    ({"dw_padding": [1, 2, 3]}, "stages[1][0].dw_padding", "[1, 2, 3]"),
    ({"dw_padding": -1}, "stages[1][0].dw_padding", "-1"),
    ({"out_channels": 16.5}, "stages[1][0].out_channels", "16.5"),
    ({"repeats": True}, "stages[1][0].repeats", "True"),
    ({"kernal": 3}, "stages[1][0]", "kernal"),
    ({"bias": True}, "stages[1][0].bias", "True"),
    ({"upsample": 3}, "stages[1][0].upsample", "3"),
])
def test_invalid_block_fields_are_named(change, field, value):
    with pytest.raises(SpecError) as e:
        ArchSpec.from_dict(small_dict(**change))
    assert field in str(e.value) and value in str(e.value)


def test_missing_and_unknown_top_level_fields():
    d = small_dict()
    del d["stages"][1][0]["type"]
    with pytest.raises(SpecError, match=r"stages\[1\]\[0\]\.type: missing"):
        ArchSpec.from_dict(d)
    d = small_dict()
    del d["input_size"]
    with pytest.raises(SpecError, match="input_size: missing"):
        ArchSpec.from_dict(d)
    with pytest.raises(SpecError, match="resolution: unknown key"):
        ArchSpec.from_dict({**small_dict(), "resolution": 3})
    with pytest.raises(SpecError, match="input_size: '224'"):
        ArchSpec.from_dict({**small_dict(), "input_size": "224"})
    with pytest.raises(SpecError, match="dropout"):
        ArchSpec.from_dict({**small_dict(), "dropout": 1.0})
    with pytest.raises(SpecError, match=r"stages\[1\]: \[\]"):
        ArchSpec.from_dict({**small_dict(), "stages": [[{"type": "conv", "out_channels": 8}], []]})
    with pytest.raises(SpecError, match="stages"):
        ArchSpec.from_dict({**small_dict(), "stages": "conv"})


def test_structural_rules():
    pool = {"type": "ir_pool", "out_channels": 64, "expansion": 6}
    d = small_dict()
    d["stages"].insert(1, [pool])
    with pytest.raises(SpecError, match=r"stages\[1\]\[0\]\.type: 'ir_pool' is only allowed as the very last row"):
        ArchSpec.from_dict(d)
    with pytest.raises(SpecError, match=r"stages\[0\]\[0\]\.se"):
        ArchSpec.from_dict({"name": "x", "input_size": 32,
                            "stages": [[{"type": "conv", "out_channels": 8, "se": True}]]})
    with pytest.raises(SpecError, match="repeats/stride"):
        ArchSpec.from_dict({**small_dict(), "stages": small_dict()["stages"] + [[{**pool, "repeats": 2}]]})


def test_programmatic_construction_is_validated_too():
    with pytest.raises(SpecError, match="block.kernel: 2"):
        BlockSpec("ir", 16, kernel=2)
    with pytest.raises(SpecError, match="input_size"):
        ArchSpec("x", 0, ((BlockSpec("conv", 8),),))


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="bad.yaml"):
        load_spec(str(bad))
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(str(tmp_path / "missing.yaml"))
    bad.write_text("- just a list\n")
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(str(bad))


# ---- issue 16 item 7: every field bounded, integers only where integers are meant
@pytest.mark.parametrize("change, field", [
    ({"stride": 2.0}, "stages[1][0].stride"),
    ({"kernel": 3.0}, "stages[1][0].kernel"),
    ({"repeats": 2.0}, "stages[1][0].repeats"),
    ({"out_channels": 16.0}, "stages[1][0].out_channels"),
    ({"upsample": 1.0}, "stages[1][0].upsample"),
    ({"dw_padding": [1.0, 1]}, "stages[1][0].dw_padding[0]"),
    ({"repeats": 10 ** 9}, "stages[1][0].repeats"),
    ({"kernel": 1001}, "stages[1][0].kernel"),
    ({"out_channels": 10 ** 7}, "stages[1][0].out_channels"),
    ({"expansion": 10 ** 400}, "stages[1][0].expansion"),
    ({"expansion": 1e300}, "stages[1][0].expansion"),
    ({"dw_padding": 5}, "stages[1][0].dw_padding"),
    ({"kernel": [[[[3]]]]}, "stages[1][0].kernel"),
])
def test_out_of_bounds_and_non_integer_fields_are_spec_errors(change, field):
    with pytest.raises(SpecError) as e:
        ArchSpec.from_dict(small_dict(**change))
    assert str(e.value).startswith(field + ":")


@pytest.mark.parametrize("top, field", [
    ({"input_size": 224.0}, "input_size"),
    ({"input_size": 10 ** 6}, "input_size"),
    ({"width_divisor": 10 ** 9}, "width_divisor"),
    ({"width_divisor": 8.0}, "width_divisor"),
    ({"in_channels": 10 ** 5}, "in_channels"),
    ({"dropout": 10 ** 400}, "dropout"),
    ({"name": "../../x"}, "name"),
    ({"name": "/abs/x"}, "name"),
    ({"name": "a\nb"}, "name"),
    ({"name": ".hidden"}, "name"),
    ({"name": 7}, "name"),
])
def test_top_level_bounds_and_safe_names(top, field):
    data = small_dict()
    data.update(top)
    with pytest.raises(SpecError) as e:
        ArchSpec.from_dict(data)
    assert str(e.value).startswith(field + ":")


def test_structure_sizes_are_bounded():
    from fbnet_zoo import spec as spec_module

    row = {"type": "ir", "out_channels": 16, "repeats": spec_module.MAX_REPEATS, "kernel": 3}
    too_many_blocks = {"name": "deep", "input_size": 32,
                       "stages": [[{"type": "conv", "out_channels": 8, "stride": 2}]] + [[row]] * 9}
    with pytest.raises(SpecError, match="stages: .*blocks in all"):
        ArchSpec.from_dict(too_many_blocks)
    many_stages = {"name": "wide", "input_size": 32, "stages": [[{"type": "conv", "out_channels": 8}]] * 1000}
    with pytest.raises(SpecError, match="stages: 1000 stages is above the maximum"):
        ArchSpec.from_dict(many_stages)
    # widths are bounded after rounding too: 8192 channels x expansion 16
    wide = small_dict(out_channels=8192, expansion=1)
    wide["stages"].append([{"type": "ir", "out_channels": 16, "expansion": 16}])
    with pytest.raises(SpecError, match=r"stages\[2\]\[0\]: resolved mid_channels 131072"):
        ArchSpec.from_dict(wide)


def test_deep_nesting_and_duplicate_keys_in_yaml_are_spec_errors(tmp_path):
    nested = "name: n\ninput_size: 32\nstages: " + "[" * 2000 + "]" * 2000 + "\n"
    with pytest.raises(SpecError, match="nested too deeply|not valid YAML"):
        ArchSpec.from_yaml(nested)
    path = tmp_path / "dup.yaml"
    path.write_text("name: dup\ninput_size: 32\ninput_size: 64\nstages:\n"
                    "- - {type: conv, out_channels: 8, stride: 2}\n")
    with pytest.raises(SpecError, match=r"dup.yaml: .*duplicate key 'input_size'"):
        ArchSpec.from_yaml(str(path))
    row_dup = "name: d\ninput_size: 32\nstages:\n- - {type: conv, out_channels: 8, out_channels: 16}\n"
    with pytest.raises(SpecError, match="duplicate key 'out_channels'"):
        ArchSpec.from_yaml(row_dup)


def test_huge_repeats_fail_fast_instead_of_hanging():
    import time

    start = time.perf_counter()
    with pytest.raises(SpecError, match="repeats"):
        fbnet_zoo.count_flops(small_dict(repeats=10 ** 9))
    assert time.perf_counter() - start < 1.0


def test_errors_share_one_root():
    from fbnet_zoo import errors

    assert issubclass(SpecError, errors.FBNetZooError) and issubclass(errors.FBNetZooError, ValueError)
    assert issubclass(fbnet_zoo.UnknownModelError, KeyError)
    assert issubclass(fbnet_zoo.UnknownModelError, errors.FBNetZooError)
    with pytest.raises(errors.FBNetZooError):
        fbnet_zoo.get_spec("no-such-model")


def test_an_arch_that_runs_out_of_pixels_at_its_own_input_size_is_refused_with_its_smallest_size():
    """Too many strides for the spec's own input_size passed build_model; the first forward then
    failed in a conv ("Kernel size can't be greater than actual input size")."""
    import numpy as np
    import torch

    from fbnet_zoo.random_specs import random_spec
    from fbnet_zoo.spec import min_input_size

    spec = fbnet_zoo.get_spec("FBNetV3-A")
    message = (r"input_size: 48 is too small for FBNetV3-A: stages\[5\]\[0\] \(kernel 3, stride 2, padding 0\) gets "
               r"2x2 pixels and leaves none; the smallest input this arch takes is 49")
    with pytest.raises(SpecError, match=message):
        spec.replace(input_size=48)
    with pytest.raises(SpecError, match=message):
        fbnet_zoo.build_model("FBNetV3-A", input_size=48)
    unpadded = {"type": "ir", "out_channels": 8, "stride": 2, "kernel": 5, "dw_padding": [0, 0]}
    with pytest.raises(SpecError, match=r"input_size: 16 is too small for tiny: stages\[2\]\[0\] \(kernel 5, stride 2, "
                                        r"padding 0\) gets 2x2 pixels and leaves none; the smallest input this arch "
                                        r"takes is 25"):
        ArchSpec.from_dict({"name": "tiny", "input_size": 16, "stages": [
            [{"type": "conv", "out_channels": 8, "stride": 2}], [unpadded], [unpadded]]})
    # the smallest size is exact: it runs there, one pixel less is refused
    rng = np.random.default_rng(5)
    randoms = [random_spec(rng, name=f"r{i}", max_stages=6) for i in range(17)]
    checked = [s for s in [spec] + randoms if 8 < min_input_size(s) < 64]  # (8: the smallest input_size of any spec)
    assert len(checked) >= 5
    for s in checked:
        n = min_input_size(s)
        with torch.no_grad():
            fbnet_zoo.FBNet(s.replace(input_size=n), num_classes=3).eval()(torch.zeros(1, 3, n, n))
        with pytest.raises(SpecError, match=f"the smallest input this arch takes is {n}"):
            s.replace(input_size=n - 1)
