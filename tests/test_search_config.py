"""The typed search config: one frozen dataclass per section, validated once; the space built once."""

import dataclasses
import re

import pytest

from fbnet_zoo.search import space as space_module
from fbnet_zoo.search.config import (DEFAULTS, PoolConfig, SearchConfig, SearchConfigError, Stage3Config, build_config,
                                     config_digest, load_config, read_raw)
from fbnet_zoo.search.runner import run_search

TINY = ["executor.kind=oracle", "family.enabled=false", "stage2.rounds=2", "stage2.m=3", "pool.n=128",
        "predictor.pretrain_epochs=2", "predictor.refit_frozen_epochs=2", "predictor.refit_full_epochs=2",
        "stage3.population=8", "stage3.top_k=4", "stage3.max_generations=2", "stage3.constraints=['flops<=0.9M']"]
FREE = ("space", "fixed_arch", "train")  # validated by the space / the training package


def _sections(schema, prefix=""):
    """Dotted paths of every section (mapping) of the schema, the top level as ''."""
    yield prefix.rstrip(".")
    for k, v in schema.items():
        if isinstance(v, dict) and v:
            yield from _sections(v, f"{prefix}{k}.")


def _leaves(schema, prefix=""):
    for k, v in schema.items():
        if f"{prefix}{k}" in FREE:
            continue
        if isinstance(v, dict) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _with(raw, path, value):
    node = raw
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return raw


@pytest.mark.parametrize("section", list(_sections(DEFAULTS)) + ["train"])
def test_an_unknown_key_in_any_section_names_its_dotted_path_and_the_allowed_keys(section):
    path = f"{section}.bogus_key" if section else "bogus_key"
    with pytest.raises(SearchConfigError, match=rf"^{re.escape(path)}: unknown key; allowed: \[.+\]"):
        build_config(_with(read_raw("default"), path, 1))
    with pytest.raises(SearchConfigError, match=rf"^{re.escape(path)}: unknown key"):
        load_config("default", [f"{path}=1"])


@pytest.mark.parametrize("path", list(_leaves(DEFAULTS)))
def test_a_wrong_type_for_any_key_names_its_dotted_path(path):
    with pytest.raises(SearchConfigError, match=rf"^{re.escape(path)}: "):
        load_config("default", [f"{path}={{a: 1}}"])


@pytest.mark.parametrize("override, match", [
    (["stage2.m=2.0"], r"^stage2.m: 2.0 is not an integer"),
    (["predictor.pretrain=maybe"], r"^predictor.pretrain: 'maybe' is not a boolean"),
    (["predictor.refit_model=lasso"], r"^predictor.refit_model: 'lasso' is not one of \['mlp', 'proxy_ridge'\]"),
    (["predictor.pretrain=false"], r"^predictor.refit_model: 'proxy_ridge' regresses on the pretrained proxy head"),
    (["stage2.early_stop.threshold=1.5"], r"^stage2.early_stop.threshold: 1.5 is outside \[-1.0, 1.0\]"),
    (["stage2.local_fraction=1.5"], r"^stage2.local_fraction: 1.5 is outside \[0.0, 1.0\]"),
    (["stage2.local_fraction=half"], r"^stage2.local_fraction: 'half' is not a number"),
    (["stage2.local_parents=0"], r"^stage2.local_parents: 0 is "),
    (["stage2.local_parentz=3"], r"^stage2.local_parentz: unknown key in override"),
    (["family.rule.beta=0"], r"^family.rule.beta: 0 is outside \(0.0, inf\]"),
    (["family.members=[{name: F, from: biggest, phi: 1}]"], r"^family.members\[0\].from: 'biggest' is not one of"),
    (["flops_convention=mobile_cv"], r"^flops_convention: 'mobile_cv' is not one of \['fvcore', 'paper'\]"),
    (["bench.source=hdf5"], r"^bench.source: 'hdf5' is not one of"),
    (["stage3.constraints=['flops<=abc']"], r"^stage3.constraints\[0\].flops: 'abc' is not a number"),
    (["executor.num_gpus_per_candidate=-1"], r"^executor.num_gpus_per_candidate: -1 is outside \[0.0, inf\]"),
    (["train.epochz=3"], r"^train.epochz: unknown key; allowed: \['dataset'"),
    (["pool.n=10", "stage2.rounds=5", "stage2.m=4"], r"^pool.n: 10 is below stage2.rounds x stage2.m = 20"),
])
def test_values_are_checked_once_at_load_with_what_is_allowed(override, match):
    with pytest.raises(SearchConfigError, match=match):
        load_config("default", override)


def test_sections_are_frozen_typed_and_round_trip_through_the_stored_mapping():
    cfg = load_config("default", ["stage2.m=16", "stage3.constraints=['flops<=0.7M&params<=40K']", "stage3.k1=1"])
    assert isinstance(cfg, SearchConfig) and cfg.stage2.m == 16 and cfg.stage2.early_stop.method == "kendall"
    assert cfg.stage3.constraints == ({"flops": 7e5, "params": 4e4},)
    # the FBNet default keeps the plain top-m-predicted rounds; the cell space's config mixes in local rounds
    assert cfg.stage2.local_fraction == 0.0 and load_config("nas_bench_201").stage2.local_fraction > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.stage2.m = 3
    stored = cfg.to_dict()
    # the stored mapping keeps the schema's keys in order and the values as given (k1 stays the int 1)
    assert list(stored) == list(DEFAULTS) and list(stored["stage3"]) == list(DEFAULTS["stage3"])
    assert stored["stage3"]["k1"] == 1 and type(stored["stage3"]["k1"]) is int
    again = SearchConfig.from_mapping(stored)
    assert again == cfg and again.to_dict() == stored
    assert config_digest(again) == config_digest(stored) == config_digest(cfg)
    # a section built in code is the same object the loader builds
    assert Stage3Config(**dict(cfg.stage3.to_dict(), constraints=["flops<=0.7M&params<=40K"])) == cfg.stage3
    assert PoolConfig(flops_min=1.0).contains(2.0, 5.0) and not PoolConfig(flops_max=1.0).contains(2.0, 5.0)


def test_every_flops_and_params_field_takes_the_same_forms():
    """stage3.constraints took 450M / 4.5e8 as strings, pool.flops_min & co. numbers only (and
    YAML reads 4.5e8 without a dot as a string): the same forms now work everywhere, and a bad
    value's message names them."""
    forms = ("300M", "300m", "3e8", "0.3G", 3e8)
    for form in forms:
        cfg = load_config("default", [f"pool.flops_min={form}", f"pool.flops_max={form}",
                                      f"stage3.constraints=['flops<={form}']"])
        assert cfg.pool.flops_min == cfg.pool.flops_max == cfg.stage3.constraints[0]["flops"] == 3e8, form
    pool = PoolConfig.from_mapping({"params_min": "40K", "params_max": "9.5M"})
    assert (pool.params_min, pool.params_max) == (4e4, 9.5e6) and pool.to_dict()["params_max"] == 9.5e6
    assert PoolConfig(flops_min=0).flops_min == 0                   # a pool bound may be 0, a constraint not
    allowed = "is not a number or a string like '450M' or '4.5e8' (suffixes K, M, G"
    for override, key in ((["pool.flops_min=300X"], "pool.flops_min"), (["pool.params_max=[1]"], "pool.params_max"),
                          (["stage3.constraints=['flops<=300X']"], "stage3.constraints[0].flops")):
        with pytest.raises(SearchConfigError) as e:
            load_config("default", override)
        assert str(e.value).startswith(key) and allowed in str(e.value), str(e.value)
    with pytest.raises(SearchConfigError, match=r"^pool.flops_min/flops_max: \(400000000.0, 300000000.0\) is an empty"):
        load_config("default", ["pool.flops_min=400M", "pool.flops_max=300M"])


def test_replacing_a_section_keeps_the_built_space_and_validates_it():
    cfg = load_config("default")
    other = cfg.replace(executor=dataclasses.replace(cfg.executor, kind="oracle"))
    assert other.search_space is cfg.search_space and other.executor.kind == "oracle"
    with pytest.raises(SearchConfigError, match=r"^stage3.top_k: 40 exceeds stage3.population \(8\)"):
        cfg.replace(stage3=Stage3Config(population=8, top_k=40))
    assert cfg.replace(mode="arch_only").search_space is not cfg.search_space


@pytest.fixture
def count_spaces(monkeypatch):
    built = []
    init = space_module.SearchSpace.__init__

    def counting_init(self, *args, **kwargs):
        built.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(space_module.SearchSpace, "__init__", counting_init)
    return built


def test_the_space_is_built_exactly_once_per_run(tmp_path, count_spaces):
    run_dir = str(tmp_path / "run")
    cfg = load_config("default", TINY)
    assert len(count_spaces) == 1  # validating the config built it
    summary = run_search(cfg, run_dir)
    assert summary["results"] and len(count_spaces) == 1
    # a resumed run (no config given) builds it once from the stored config
    run_search(None, run_dir, resume=True, report=False)
    assert len(count_spaces) == 2
    # resuming with a config whose placement / stage-3 sections changed uses that config's space
    cfg2 = load_config("default", TINY + ["stage3.constraints=['flops<=1M']"])
    assert len(count_spaces) == 3
    run_search(cfg2, run_dir, resume=True, report=False)
    assert len(count_spaces) == 3


def test_a_run_dir_stored_before_a_key_existed_resumes_with_that_keys_default(tmp_path):
    from fbnet_zoo.search.store import RunStore

    run_dir = str(tmp_path / "run")
    cfg = load_config("default", TINY)
    run_search(cfg, run_dir, stages=(1,), report=False)
    store = RunStore(run_dir, create=False)
    try:  # as written by a version without oracle.delay_s and without the output section
        old = store.get_meta("config")
        del old["oracle"]["delay_s"], old["output"]
        store.set_meta(config=old)
    finally:
        store.close()
    run_search(cfg, run_dir, resume=True, stages=(1,), report=False)  # no "different config"
    with pytest.raises(SearchConfigError, match=r"different config.*stage2.m: 3 != 4"):
        run_search(load_config("default", TINY + ["stage2.m=4"]), run_dir, resume=True, stages=(1,), report=False)
