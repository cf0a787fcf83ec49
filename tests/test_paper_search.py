"""The ImageNet search config reads Table 2 as published: the stage-4 expansion tie, channel
grids that are what gets built, the paper's FLOPs convention and the paper's family rule."""

import numpy as np
import pytest

from fbnet_zoo import count_flops, get_spec, make_divisible
from fbnet_zoo.scaling import FBNETV3_COMPOUND, FBNETV3_PHI
from fbnet_zoo.search.config import SearchConfigError, load_config
from fbnet_zoo.search.family import parse_family
from fbnet_zoo.search.pool import RowCostCache, sobol_points
from fbnet_zoo.training.recipe import Recipe


@pytest.fixture(scope="module")
def cfg():
    return load_config("imagenet_fbnetv3")


@pytest.fixture(scope="module")
def space(cfg):
    return cfg.search_space


def _channels_dim(space, block):
    return next(d for d in space.dims if d.name == f"space.blocks[{block}].channels")


def test_channel_grids_are_the_built_widths_deduplicated(space):
    # Table 2's grids, and what make_divisible(c, 8) builds of them
    published = {0: (16, 24, 2), 1: (16, 24, 2), 2: (20, 32, 4), 3: (24, 48, 4), 4: (56, 84, 4),
                 5: (96, 144, 4), 6: (180, 224, 4), 7: (180, 224, 4)}
    expected = {0: [16, 24], 1: [16, 24], 2: [24, 32], 3: [24, 32, 40, 48], 4: [56, 64, 72, 80, 88],
                5: [96, 104, 112, 120, 128, 136, 144], 6: [184, 192, 200, 208, 216, 224],
                7: [184, 192, 200, 208, 216, 224]}
    for block, (lo, hi, step) in published.items():
        values = _channels_dim(space, block).values()
        assert values == expected[block], block
        assert values == sorted({make_divisible(c, 8) for c in range(lo, hi + 1, step)})
    # decoded channels are built as they are (nothing is rounded again at build time)
    units = sobol_points(space.ndim, 64, seed=0)
    for u in units:
        values = space.decode(u)
        arch = space.build_arch(values)
        for block in published:
            c = values[f"space.blocks[{block}].channels"]
            assert make_divisible(c, 8) == c
        assert arch.stages[4][0].out_channels == values["space.blocks[4].channels"]


def test_stage4_rows_tie_expansions_not_channels(space):
    assert space.ties == {
        "stage4_expansion_first": ["space.blocks[4].expansion.first", "space.blocks[5].expansion.first"],
        "stage4_expansion_other": ["space.blocks[4].expansion.other", "space.blocks[5].expansion.other"]}
    # the reading: every released searched model has equal stage-4 expansions in both rows
    for name in ("FBNetV3-B", "FBNetV3-C", "FBNetV3-D", "FBNetV3-E"):
        rows = get_spec(name).stages[4]
        assert rows[0].expansion == rows[2].expansion and rows[1].expansion == rows[3].expansion, name
    pairs = set()
    for u in sobol_points(space.ndim, 512, seed=1):
        arch = space.build_arch(space.decode(u))
        r = arch.stages[4]
        assert r[0].expansion == r[2].expansion and r[1].expansion == r[3].expansion
        pairs.add((r[0].out_channels, r[2].out_channels))
    assert len(pairs) == 5 * 7 and (80, 128) in pairs  # every built channel pair, FBNetV3-E's too


def test_fbnetv3_e_stage4_is_in_the_space(space):
    e = get_spec("FBNetV3-E").stages[4]
    values = space.decode(np.full(space.ndim, 0.5))
    values.update({"space.blocks[4].channels": 80, "space.blocks[5].channels": 128,
                   "space.blocks[4].depth": 5, "space.blocks[5].depth": 8,
                   "space.blocks[4].expansion.first": 5, "space.blocks[5].expansion.first": 5,
                   "space.blocks[4].expansion.other": 3, "space.blocks[5].expansion.other": 3,
                   "space.blocks[4].kernel.first": 5, "space.blocks[4].kernel.other": 3,
                   "space.blocks[5].kernel.first": 3, "space.blocks[5].kernel.other": 5})
    u = space.unit_of(values)
    assert space.decode(u) == values  # a point of the space decodes to exactly these values
    built = space.build_arch(values).stages[4]
    strip = [(r.out_channels, r.repeats, r.stride, r.kernel, r.expansion, r.se) for r in e]
    assert [(r.out_channels, r.repeats, r.stride, r.kernel, r.expansion, r.se) for r in built] == strip


def test_imagenet_search_counts_flops_as_the_paper(cfg, space):
    assert cfg.flops_convention == "paper" and space.flops_convention == "paper"
    arch = space.build_arch(space.decode(np.full(space.ndim, 0.3)))
    assert RowCostCache("paper").cost(arch, 1000)[0] == count_flops(arch, convention="paper")
    assert RowCostCache("paper").cost(arch, 1000)[0] < RowCostCache().cost(arch, 1000)[0]
    assert load_config("default").flops_convention == "fvcore"
    with pytest.raises(SearchConfigError, match=r"flops_convention: 'mobile_cv' is not one of \['fvcore', 'paper'\]"):
        load_config("imagenet_fbnetv3", ["flops_convention=mobile_cv"])


def test_family_section_derives_a_f_g_from_any_winners(cfg):
    family = cfg.family.derived
    b, e = get_spec("FBNetV3-B"), get_spec("FBNetV3-E")
    recipe = Recipe(drop_path=0.05, resolution=248)
    winners = [(count_flops(e, convention="paper"), e, recipe.replace(resolution=264), "750m"),
               (count_flops(b, convention="paper"), b, recipe, "450m")]
    out = {arch.name: (arch, r, tag) for arch, r, _, tag in family.derive(winners)}
    assert set(out) == {"FBNetV3-B_A", "FBNetV3-E_F", "FBNetV3-E_G"}
    a, ra, tag = out["FBNetV3-B_A"]
    assert a.stages == get_spec("FBNetV3-A").stages and a.input_size == ra.resolution == 224 and tag == "450m"
    assert ra.drop_path == 0.05  # A keeps B's recipe
    for name in ("F", "G"):
        arch, r, tag = out[f"FBNetV3-E_{name}"]
        assert arch.stages == FBNETV3_COMPOUND.apply(e, FBNETV3_PHI[f"FBNetV3-{name}"]).stages
        assert r.drop_path == 0.2 and r.resolution == arch.input_size and tag == "750m"


@pytest.mark.parametrize("section,match", [
    ({"enabled": True, "members": [{"name": "F", "from": "biggest", "phi": 1}]}, r"members\[0\]\.from: 'biggest'"),
    ({"enabled": True, "members": [{"name": "F", "from": "largest", "phi": 1, "width": 2}]}, r"cannot be given with phi"),
    ({"enabled": True, "members": [{"name": "F", "from": "largest"}]}, r"scales nothing"),
    ({"enabled": True, "members": [{"name": "F", "from": "largest", "phi": 1, "recipe": {"resolution": 300}}]},
     r"recipe\.resolution"),
    ({"enabled": True, "members": [{"name": "F", "from": "largest", "phi": 1, "recipe": {"drop_path": 2}}]},
     r"drop_path"),
    ({"enabled": True, "rule": {"alpha": 1.2, "beta": 1.1}}, r"family\.rule"),
])
def test_bad_family_sections_are_named(section, match):
    with pytest.raises(SearchConfigError, match=match):
        parse_family(section)


def test_recipe_only_config_has_the_papers_settings_and_runs(tmp_path):
    from fbnet_zoo.search.runner import run_search

    cfg = load_config("imagenet_recipe_only")
    assert (cfg.mode, cfg.pool.n, cfg.stage2.m, cfg.stage2.rounds) == ("recipe_only", 20000, 48, 4)
    assert cfg.flops_convention == "paper"
    space = cfg.search_space
    assert all(d.name.startswith("recipe.") for d in space.dims)
    assert space.base_recipe.epochs == 150 and space.base_recipe.lr_decay == 0.963
    # the one constraint admits every searched resolution of the fixed arch
    top = max(space.dims[0].values()) if space.dims[0].name == "recipe.resolution" else None
    assert top == 272 and count_flops("FBNetV3-B", top, convention="paper") <= cfg.stage3.constraints[0]["flops"]
    small = load_config("imagenet_recipe_only", [
        "executor.kind=oracle", "pool.n=256", "stage2.rounds=2", "stage2.m=4", "stage3.population=16",
        "stage3.top_k=8", "stage3.max_generations=5", "predictor.pretrain_epochs=2",
        "predictor.refit_frozen_epochs=2", "predictor.refit_full_epochs=2", f"train.data_dir={tmp_path}"])
    summary = run_search(small, str(tmp_path / "rec"), report=False)
    (result,) = summary["results"].values()
    winner = get_spec(result["name"])
    assert winner.stages == get_spec("FBNetV3-B").stages  # only the recipe was searched
    recipe = Recipe.from_dict(result["recipe"])
    assert winner.input_size == recipe.resolution and recipe.epochs == 150
    assert result["flops"] == count_flops(winner, convention="paper")
