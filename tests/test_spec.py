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
