"""The CIFAR-10 variant of an arch (FBNetV3 paper Sec. 4.3): the second stride-2 block in
forward order (stem first) becomes stride 1, channels stay, the input is 32x32 for a base
model and grows with the model's own resolution scaling; FLOPs match fvcore."""

import pytest
import torch

from fbnet_zoo import ArchSpec, BlockSpec, SpecError, build_model, count_flops, fvcore_flops, list_models, scale
from fbnet_zoo.cifar import (FAMILY_BASES, cifar_resolution, cifar_variant, family_base, stride2_blocks,
                             unstrided_block)

ZOO = list_models()




def _rows(spec):
    return [(si, ri, row) for si, stage in enumerate(spec.stages) for ri, row in enumerate(stage)]


@pytest.mark.parametrize("name", ZOO)
def test_variant_changes_exactly_the_second_stride2_block(name):
    spec = build_model(name, num_classes=0).spec
    v = cifar_variant(name)
    assert v.name == f"{spec.name}-CIFAR"
    # Which block: the second stride-2 block in forward order; the stem is the first.
    assert stride2_blocks(spec)[0] == (0, 0)
    assert unstrided_block(spec) == stride2_blocks(spec)[1] == (2, 0)
    changed = [(si, ri) for (si, ri, a), (_, _, b) in zip(_rows(spec), _rows(v)) if a != b]
    assert changed == [(2, 0)]
    old, new = spec.stages[2][0], v.stages[2][0]
    assert (old.stride, new.stride) == (2, 1)
    assert new == old.__class__(**{**old.__dict__, "stride": 1, "dw_padding": None})
    # Channels are kept everywhere, the remaining stride-2 blocks are the same.
    assert v.stage_channels() == spec.stage_channels()
    assert [r.out_channels for _, _, r in _rows(v)] == [r.out_channels for _, _, r in _rows(spec)]
    assert stride2_blocks(v) == tuple(b for b in stride2_blocks(spec) if b != (2, 0))
    last = f"stage{spec.feature_stages[-1]}"
    assert (spec.stage_strides()[last], v.stage_strides()[last]) == (32, 16)


def test_resolution_rule_for_the_zoo():
    sizes = {n: cifar_variant(n).input_size for n in ZOO}
    # Searched models (B-E) are their own base: 32. A was scaled *down* from B: stays 32.
    for n in ("FBNetV3-A", "FBNetV3-B", "FBNetV3-C", "FBNetV3-D", "FBNetV3-E"):
        assert sizes[n] == 32
    # F and G were scaled up from E (264 px): 32 * 272/264 -> 33, 32 * 320/264 -> 39.
    assert sizes["FBNetV3-F"] == 33 and sizes["FBNetV3-G"] == 39
    assert family_base("FBNetV3-G").name == FAMILY_BASES["FBNetV3-G"] == "FBNetV3-E"
    assert family_base("fbnetv3_c").name == "FBNetV3-C"
    assert cifar_resolution("FBNetV3-G", multiple=8) == 40
    assert cifar_resolution("FBNetV3-G", base="FBNetV3-A") == round(32 * 320 / 224)
    assert cifar_resolution("FBNetV3-G", base=160) == 64
    assert cifar_variant("FBNetV3-G", resolution=48).input_size == 48


def test_searched_yaml_and_scaled_specs(tmp_path):
    searched = scale("FBNetV3-B", width=0.5, name="searched-x")
    path = tmp_path / "searched-x.yaml"
    searched.save_yaml(path)
    v = cifar_variant(str(path))
    assert v.name == "searched-x-CIFAR" and v.input_size == 32
    assert v.stage_channels() == searched.stage_channels()
    assert unstrided_block(searched) == (2, 0) and v.stages[2][0].stride == 1
    # A spec scaled up from a searched one grows with its resolution scaling when the base is named.
    bigger = scale(searched, resolution=1.25, name="searched-x-big")
    assert cifar_variant(bigger, base=searched).input_size == 40
    assert cifar_variant(bigger).input_size == 32            # no base known: its own base
    assert cifar_variant(searched.to_dict(), name="mine").name == "mine"


def test_dw_padding_of_the_changed_block_is_dropped_so_the_map_keeps_its_size():
    spec = ArchSpec("padded", 64, (
        (BlockSpec("conv", 8, stride=2),),
        (BlockSpec("ir", 16, stride=2, kernel=3, expansion=2, dw_padding=(0, 0)),),
        (BlockSpec("ir", 16, stride=2, kernel=5, expansion=2, dw_padding=(1, 1)),),
        (BlockSpec("ir_pool", 32, expansion=2),),
    ))
    v = cifar_variant(spec)
    assert v.stages[1][0].stride == 1 and v.stages[1][0].dw_padding is None
    assert v.stages[2][0].dw_padding == (1, 1)               # other rows are untouched
    model = build_model(v, num_classes=10).eval()
    feats = model.forward_stages(torch.zeros(1, 3, 32, 32))
    assert feats["stage0"].shape[-1] == feats["stage1"].shape[-1] == 16


@pytest.mark.parametrize("name", ZOO)
def test_flops_at_32_match_fvcore(name):
    v = cifar_variant(name)
    model = build_model(v, num_classes=10)
    assert count_flops(v, input_size=32, num_classes=10) == fvcore_flops(model, input_size=32)
    assert count_flops(v, num_classes=10) == fvcore_flops(model)      # at the variant's own size
    with torch.no_grad():
        out = model.eval()(torch.zeros(2, 3, v.input_size, v.input_size))
    assert out.shape == (2, 10)


def test_errors_name_the_problem():
    one_stride = ArchSpec("flat", 32, ((BlockSpec("conv", 8, stride=2),), (BlockSpec("ir", 8),)))
    with pytest.raises(SpecError, match="has 1 stride-2 block"):
        cifar_variant(one_stride)
    with pytest.raises(SpecError, match="which"):
        unstrided_block("FBNetV3-A", which=0)
    with pytest.raises(SpecError, match="resolution"):
        cifar_variant("FBNetV3-A", resolution=4)
    with pytest.raises(KeyError, match="FBNetV3-Z|fbnetv3_z"):
        cifar_variant("FBNetV3-Z")
