"""Search space, encoding, pool and config: the spec of what a search may propose."""

import numpy as np
import pytest

from fbnet_zoo import build_model, count_flops, count_params
from fbnet_zoo.search.config import (PoolConfig, SearchConfigError, build_config, load_config, parse_constraint,
                                     read_raw)
from fbnet_zoo.search.encoding import Encoder
from fbnet_zoo.search.pool import build_pool, sobol_points
from fbnet_zoo.search.recipe import Recipe, RecipeError
from fbnet_zoo.spec import ArchSpec

SHIPPED = ["default", "cifar10", "imagenet_fbnetv3"]


@pytest.fixture(scope="module")
def spaces():
    return {n: load_config(n).search_space for n in SHIPPED}


def _in_dim(dim, value):
    if dim.kind == "choice":
        return value in dim.choices
    ok = dim.low - 1e-9 <= value <= dim.high + 1e-9
    if dim.step is not None:
        k = (value - dim.low) / dim.step
        ok = ok and abs(k - round(k)) < 1e-6
    return ok


@pytest.mark.parametrize("name", SHIPPED)
def test_decoded_candidates_are_valid_and_inside_declared_ranges(spaces, name):
    space = spaces[name]
    pts = np.vstack([sobol_points(space.ndim, 64, seed=1), [space.extreme_point(False), space.extreme_point(True)]])
    for u in pts:
        values = space.decode(u)
        for d in space.dims:
            assert _in_dim(d, values[d.name]), (d.name, values[d.name])
        arch, recipe = space.build(values, name="probe")
        assert isinstance(arch, ArchSpec)
        assert arch.input_size == recipe.resolution
        assert count_flops(arch, None, space.num_classes) > 0  # every stage keeps pixels
        # the arch rows are exactly what the values say
        for g in space.groups:
            if "channels" in g.searched:
                chans = {row.out_channels for row in arch.stages[g.stage]}
                assert values[g.searched["channels"]] in chans
        # decode is a function of the canonical point too
        assert space.decode(space.canonical(u)) == values


def test_ranges_steps_and_choices_of_the_imagenet_space_follow_table_2(spaces):
    space = spaces["imagenet_fbnetv3"]
    dims = {d.name: d for d in space.dims}
    assert dims["space.blocks[2].channels"].values() == [24, 32]  # [20, 32, 4] as built (width_divisor 8)
    assert dims["space.blocks[4].depth"].values() == [4, 5, 6, 7, 8]
    assert dims["space.blocks[2].expansion.first"].values() == [4, 5, 6, 7]
    assert dims["space.blocks[2].kernel.first"].choices == (3, 5)
    assert dims["recipe.resolution"].values() == list(range(224, 273, 8))
    assert dims["recipe.optimizer"].choices == ("rmsprop", "sgd")
    assert dims["recipe.weight_decay"].values()[0] == pytest.approx(7e-6)
    assert dims["recipe.weight_decay"].values()[-1] == pytest.approx(21e-6)


def test_tied_dimensions_share_one_coordinate_and_stay_tied(spaces):
    space = spaces["imagenet_fbnetv3"]
    a, b = space.ties["stage4_expansion_first"]
    assert space.ndim == len(space.dims) - 2  # two tie groups: first and other expansions
    da, db = (next(d for d in space.dims if d.name == n) for n in (a, b))
    for u in sobol_points(space.ndim, 128, seed=3):
        v = space.decode(u)
        # one coordinate: the same quantile of each range (monotone together)
        qa = da.index_of(v[a]) / (da.levels - 1)
        qb = db.index_of(v[b]) / (db.levels - 1)
        assert abs(qa - qb) < 0.2
    # identical ranges tied -> identical values, also after GA-style canonicalisation
    raw = read_raw("default")
    raw["space"]["blocks"][2]["channels"] = {"range": [16, 32, 8], "tie": "w"}
    raw["space"]["blocks"][3]["channels"] = {"range": [16, 32, 8], "tie": "w"}
    s2 = build_config(raw).search_space
    for u in np.random.default_rng(0).random((50, s2.ndim)):
        v = s2.decode(u)
        assert v["space.blocks[2].channels"] == v["space.blocks[3].channels"]
        assert s2.decode(s2.canonical(u)) == v


def test_sobol_pool_is_deterministic_per_seed_and_labels_are_exact(spaces):
    space = spaces["default"]
    window = PoolConfig(flops_min=4e5, flops_max=1.5e6)
    p1 = build_pool(space, 200, seed=5, window=window)
    p2 = build_pool(space, 200, seed=5, window=window)
    p3 = build_pool(space, 200, seed=6, window=window)
    assert p1.keys == p2.keys and np.array_equal(p1.units, p2.units)
    assert p1.keys != p3.keys
    assert len(set(p1.keys)) == len(p1.keys) == 200
    for i in range(0, 200, 40):
        arch = space.build_arch(p1.values[i])
        assert p1.flops[i] == count_flops(arch, None, space.num_classes)
        assert p1.params[i] == count_params(arch, space.num_classes)
        assert window.flops_min <= p1.flops[i] <= window.flops_max


def test_encoding_is_one_hot_for_choices_and_min_max_for_numbers(spaces):
    space = spaces["imagenet_fbnetv3"]
    enc = Encoder(space)
    pts = sobol_points(space.ndim, 32, seed=0)
    x = enc.encode_units(pts)
    assert x.shape == (32, enc.width)
    assert x.min() >= 0 and x.max() <= 1
    col = 0
    for d in space.dims:
        if d.kind == "choice":
            assert np.all(x[:, col:col + d.width].sum(1) == 1)
        col += d.width
    v = space.decode(pts[3])
    assert np.allclose(enc.encode_values(v), x[3])
    lo = enc.encode_units(space.extreme_point(False)[None])[0]
    hi = enc.encode_units(space.extreme_point(True)[None])[0]
    num = [i for i, n in enumerate(enc.names) if "=" not in n]
    assert np.all(lo[num] == 0) and np.all(hi[num] == 1)


def test_a_decoded_default_candidate_builds_and_runs():
    import torch

    space = load_config("default").search_space
    arch, recipe = space.decode_point(sobol_points(space.ndim, 1, seed=0)[0], "probe")
    model = build_model(arch, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, recipe.resolution, recipe.resolution)).shape == (2, 10)


def test_modes_recipe_only_and_arch_only_search_the_right_dimensions():
    rec = load_config("default", ["mode=recipe_only", "fixed_arch=FBNetV3-A",
                                                         "space.recipe.base.resolution=64"]).search_space
    assert all(d.name.startswith("recipe.") for d in rec.dims)
    arch, recipe = rec.decode_point(np.full(rec.ndim, 0.3))
    from fbnet_zoo import get_spec

    assert arch.stages == get_spec("FBNetV3-A").stages and arch.input_size == recipe.resolution
    arc = load_config("default", ["mode=arch_only"]).search_space
    assert not any(d.name.startswith("recipe.") for d in arc.dims)
    _, r = arc.decode_point(np.full(arc.ndim, 0.9))
    assert r.optimizer == arc.base_recipe.optimizer and r.lr == arc.base_recipe.lr


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("overrides, match", [
    (["pool.nn=3"], r"pool.nn: unknown key"),
    (["bogus=1"], r"bogus: unknown key"),
    (["stage2.m=zero"], r"stage2.m: 'zero' is not an integer"),
    (["pool.flops_min=5", "pool.flops_max=1"], r"empty \(inverted\) range"),
    (["mode=sideways"], r"mode: 'sideways' is not one of"),
    (["stage3.top_k=100"], r"stage3.top_k: 100 exceeds"),
    (["space.blocks=[]"], r"space.blocks: \[\] is not a non-empty list"),
    (["stage2.early_stop.method=pearson"], r"method: 'pearson' is not one of"),
])
def test_malformed_configs_raise_one_clear_error(overrides, match):
    with pytest.raises(SearchConfigError, match=match):
        load_config("default", overrides)


def _space_error(mutate, match):
    raw = read_raw("default")
    mutate(raw["space"])
    with pytest.raises(SearchConfigError, match=match):
        build_config(raw)


def test_malformed_spaces_raise_one_clear_error():
    _space_error(lambda s: s["blocks"][2].__setitem__("channels", [32, 16, 8]), r"channels: \[32, 16, 8\] is an empty \(inverted\) range")
    _space_error(lambda s: s["blocks"][2].__setitem__("kernel", {"choices": [3, 4]}), r"kernel.first: 4 is not an odd")
    _space_error(lambda s: s["blocks"][2].__setitem__("kernel", [3, 5]), r"kernel.first: 4 is not an odd")
    _space_error(lambda s: s["blocks"][2].__setitem__("widthh", 3), r"blocks\[2\].widthh: unknown key")
    _space_error(lambda s: s["recipe"]["search"].__setitem__("lrr", [0.1, 0.2]), r"recipe.search.lrr: unknown recipe field")
    _space_error(lambda s: s["recipe"]["search"].__setitem__("lr", [0.1]), r"lr: \[0.1\] is not a range")
    _space_error(lambda s: s["recipe"]["search"].__setitem__("dropout", [0.5, 1.5, 0.5]), r"dropout")
    _space_error(lambda s: s["blocks"][1].__setitem__("depth", {"choices": []}), r"depth.choices: \[\] is not a non-empty list")
    _space_error(lambda s: s["blocks"][2].__setitem__("channels", {"range": [16, 32, 8], "tie": "lonely"}), r"tie 'lonely'")


def test_constraints_parse_from_strings_and_mappings():
    assert parse_constraint("flops<=450M") == {"flops": 450e6}
    assert parse_constraint("0.8M") == {"flops": 0.8e6}
    assert parse_constraint({"flops": 1e9, "params": 5e6}) == {"flops": 1e9, "params": 5e6}
    assert parse_constraint("flops<=1G&params<=9M") == {"flops": 1e9, "params": 9e6}
    for bad in ("latency<=3", "flops<=abc", {"macs": 1}, "flops<=-1"):
        with pytest.raises(SearchConfigError):
            parse_constraint(bad)


def test_recipe_from_dict_round_trips_and_names_what_is_wrong():
    r = Recipe(optimizer="sgd", lr=0.02, epochs=3)
    assert Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(RecipeError, match=r"recipe\.lrr: unknown key; allowed: \['optimizer', 'lr'"):
        Recipe.from_dict({"lrr": 0.1})
    with pytest.raises(RecipeError, match=r"recipe: \[1, 2\] is not a mapping"):
        Recipe.from_dict([1, 2])
