"""NAS-Bench-201: the cell space, its networks and FLOPs, the table executor, the methods and
the benchmark's output."""

import collections
import importlib.util
import json
import logging
import os

import numpy as np
import pytest
import torch

from fbnet_zoo.search.baselines import (NARSSettings, QueryLog, TabularSpace, best_after, nars, neighbours,
                                        random_search, regularized_evolution, sobol_pool)
from fbnet_zoo.search.config import SearchConfigError, load_config
from fbnet_zoo.search.pool import build_pool
from fbnet_zoo.search.runner import run_search
from fbnet_zoo.search.spaces import NASBench201Space
from fbnet_zoo.search.spaces.nas_bench_201 import (OPS, CellArchError, CellNetwork, all_archs, format_arch,
                                                   parse_arch)
from fbnet_zoo.search.store import RunStore
from fbnet_zoo.search.tabular import Table, TableError, TableExecutor, csv_datasets, packaged_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


@pytest.fixture(scope="module")
def c10():
    return Table.from_csv(None, "cifar10")


@pytest.fixture(scope="module")
def tab10(c10):
    space = load_config("nas_bench_201").search_space
    return TabularSpace(space, space.arch_of, dict(zip(c10.archs, c10.acc)))


# ---------------------------------------------------------------------------- the table
def test_packaged_table_has_every_cell_and_the_published_optima(c10):
    assert csv_datasets() == ["cifar10", "cifar100"]
    c100 = Table.from_csv(packaged_table(), "cifar100")
    assert len(c10) == len(c100) == 15625
    assert c10.optimum == pytest.approx(94.3733, abs=1e-9)
    assert c100.optimum == pytest.approx(73.5133, abs=1e-9)
    assert set(c10.archs) == set(all_archs())
    assert c10[EXAMPLE] == pytest.approx(93.66)
    assert c10.acc.min() == pytest.approx(10.0) and c100.acc.min() == pytest.approx(1.0)  # cut-off cells


def test_any_dataset_column_works_and_bad_tables_name_the_problem(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(f"arch,ImageNet16-120_test_acc,cifar10_test_acc\n{EXAMPLE},44.5,93.1\n")
    assert csv_datasets(str(path)) == ["ImageNet16-120", "cifar10"]
    t = Table.from_csv(str(path), "ImageNet16-120")
    assert t[EXAMPLE] == 44.5 and len(t) == 1
    with pytest.raises(TableError, match=r"bench.dataset: 'svhn' .*\['ImageNet16-120', 'cifar10'\]"):
        Table.from_csv(str(path), "svhn")
    path.write_text(f"arch,cifar10_test_acc\n{EXAMPLE},n/a\n")
    with pytest.raises(TableError, match=r"t.csv:2: cifar10_test_acc = 'n/a' is not a number"):
        Table.from_csv(str(path), "cifar10")
    with pytest.raises(TableError, match="cannot be read"):
        Table.from_csv(str(tmp_path / "missing.csv"), "cifar10")
    # a malformed arch string: was accepted, then every look-up missed and a search round failed
    path.write_text(f"arch,cifar10_test_acc\n{EXAMPLE},93.1\n|conv_3x3~0|,90.0\n")
    with pytest.raises(TableError, match=r"t.csv:3: arch '\|conv_3x3~0\|'"):
        Table.from_csv(str(path), "cifar10")
    with pytest.raises(SearchConfigError, match="bench.source"):
        load_config("nas_bench_201", ["bench.source=hdf5"])


def test_official_benchmark_files_through_nats_bench():
    pytest.importorskip("nats_bench", reason="the optional nats_bench package is not installed")
    path = os.environ.get("FBNET_ZOO_NATS_BENCH")
    if not path:
        pytest.skip("FBNET_ZOO_NATS_BENCH does not point at the official NATS-tss benchmark files")
    t = Table.from_official(path, "cifar10", "nats_bench")
    assert len(t) == 15625 and t.optimum == pytest.approx(94.3733, abs=1e-3)


# ---------------------------------------------------------------------------- arch strings
def test_arch_strings_round_trip_exactly_as_the_benchmark_writes_them(c10):
    space = load_config("nas_bench_201").search_space
    for arch in c10.archs:
        assert format_arch(parse_arch(arch)) == arch
    for arch in c10.archs[:500]:
        values = space.values_of(arch)
        assert space.arch_of(values) == arch
        assert space.arch_of(space.decode(space.unit_of(values))) == arch        # through the unit cube
        assert space.candidate("k", values).arch == arch
    assert parse_arch(EXAMPLE) == ("nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect",
                                   "nor_conv_3x3", "skip_connect")
    for bad, match in [("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "'conv' is not one of"),
                       ("|none~0|+|none~0|none~1|", "has 2 nodes"),
                       ("|none~0|+|none~1|none~1|+|none~0|none~1|none~2|", "is not 'op~0'"),
                       ("|none~0|+|none~0|+|none~0|none~1|none~2|", "node 2 has 1 incoming edges")]:
        with pytest.raises(CellArchError, match=match):
            parse_arch(bad)


# ---------------------------------------------------------------------------- FLOPs and params
def _fvcore(model, size):
    from fvcore.nn import FlopCountAnalysis

    fa = FlopCountAnalysis(model.eval(), torch.randn(1, 3, size, size))
    fa.unsupported_ops_warnings(False)
    fa.uncalled_modules_warnings(False)
    return fa.total(), sum(p.numel() for p in model.parameters())


def test_analytic_flops_and_params_equal_fvcore_on_built_networks():
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    corners = [format_arch([op] * 6) for op in OPS] + [EXAMPLE,
                                                       format_arch(["nor_conv_3x3"] * 5 + ["none"])]
    for num_classes in (10, 100):   # the benchmark's skeleton, every op and the corner cells
        space = NASBench201Space({"num_classes": num_classes})
        for arch in corners:
            model = CellNetwork(arch, num_classes)
            assert model(torch.randn(2, 3, 32, 32)).shape == (2, num_classes)
            assert _fvcore(model, 32) == space.cost(space.values_of(arch)), arch
    # a few hundred random cells on a small skeleton (same modules, cheap to trace)
    rng = np.random.default_rng(0)
    archs = all_archs()
    for k, i in enumerate(rng.choice(len(archs), 200, replace=False)):
        nc = (10, 100)[k % 2]
        space = NASBench201Space({"num_classes": nc, "channels": 4, "cells_per_stage": 1, "input_size": 8})
        model = CellNetwork(archs[i], nc, channels=4, cells_per_stage=1)
        assert _fvcore(model, 8) == space.cost(space.values_of(archs[i])), archs[i]
    space = NASBench201Space({"num_classes": 10})
    assert space.min_resources() == dict(zip(("flops", "params"), space.cost(space.values_of(corners[0]))))


# ---------------------------------------------------------------------------- the tabular executor in a run
NB_ARGS = ["pool.n=256", "stage2.rounds=3", "stage2.m=5", "predictor.pretrain_epochs=3",
           "predictor.refit_frozen_epochs=10", "predictor.refit_full_epochs=10", "stage3.max_generations=5"]


class _Crash(Exception):
    pass


class _DyingTableExecutor(TableExecutor):
    """Looks up ``lives`` candidates, then dies (as a killed process would, mid-round)."""

    def __init__(self, table, log_path, lives):
        super().__init__(table, log_path)
        self.lives = lives

    def run(self, candidates, epochs, on_result):
        for cand in candidates:
            if self.lives <= 0:
                raise _Crash("killed")
            self.lives -= 1
            super().run([cand], epochs, on_result)


def _outcome(run_dir):
    store = RunStore(run_dir)
    try:
        cands = [(c["key"], c["round"], c["arch"], c["status"], tuple(c["top1"])) for c in store.candidates()]
        results = {k: (r["key"], r["arch"], r["flops"], r["predicted_top1"]) for k, r in store.results().items()}
        early = store.get_progress("early_stop")["info"]
    finally:
        store.close()
    return cands, results, early


def test_table_executor_run_is_counted_stored_and_resumes_after_a_kill(tmp_path, c10):
    cfg = load_config("nas_bench_201", NB_ARGS)
    killed = str(tmp_path / "killed")
    log = os.path.join(killed, "table_queries.log")
    for lives in (3, 4):   # dies mid round 1, then mid round 2
        with pytest.raises(_Crash):
            run_search(cfg if lives == 3 else None, killed, resume=lives != 3,
                       executor=_DyingTableExecutor(c10, log, lives), report=False)
    summary = run_search(None, killed, resume=True)          # the config's own table executor
    reference = str(tmp_path / "reference")
    run_search(cfg, reference, report=False)
    assert _outcome(killed) == _outcome(reference)
    cands, results, early = _outcome(killed)
    assert len(cands) == 15 and all(c[3] == "ok" for c in cands)
    assert all(c[4] == (c10[c[2]],) for c in cands)          # each stored result is the table's entry
    lookups = collections.Counter(open(log).read().split())
    assert max(lookups.values()) == 1 and set(lookups) == {c[0] for c in cands}   # every query once
    assert early["skipped"].startswith("no learning curves")
    report = open(summary["report"]["markdown"]).read()
    assert "early stopping skipped (no learning curves" in report
    for label, r in results.items():
        parse_arch(r[1])
        bound = {"250m": 250e6, "60m": 60e6}[label]
        assert r[2] <= bound
        assert os.path.exists(os.path.join(killed, "cells", f"fbnetv3_search_killed_{label}.yaml"))


def test_an_unreadable_table_fails_before_the_run_dir_is_written(tmp_path):
    # it used to fail after the store was created: the corrected command was then refused
    # ("already holds a run") and --resume kept the bad table
    cfg = load_config("nas_bench_201", [f"bench.table={tmp_path / 'missing.csv'}"])
    with pytest.raises(TableError, match="missing.csv' cannot be read"):
        run_search(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_table_executor_needs_the_cell_space_and_cifar100_sizes_the_classifier(tmp_path):
    with pytest.raises(SearchConfigError, match="does not serve space.kind 'fbnet'"):
        run_search(load_config("default", ["executor.kind=table"]), str(tmp_path / "x"))
    assert load_config("nas_bench_201", ["bench.dataset=cifar100"]).search_space.num_classes == 100
    with pytest.raises(SearchConfigError, match="space.num_classes: None is needed"):
        load_config("nas_bench_201", ["bench.dataset=svhn"])


# ---------------------------------------------------------------------------- methods
def test_queries_are_counted_once_per_architecture(tab10):
    log = QueryLog(tab10, 3)
    assert log.query(5) == tab10.acc[5] and log.query(5) == tab10.acc[5] and log.used == 1
    log.query(7)
    log.query(9)
    assert log.query(11) is None and log.used == 3 and log.query(7) == tab10.acc[7]
    assert list(log.best_so_far()) == list(np.maximum.accumulate(tab10.acc[[5, 7, 9]]))
    for method in (random_search, regularized_evolution):
        log = method(tab10, 40, seed=3)
        assert log.used == 40 and len(set(log.order)) == 40
        assert best_after(log.best_so_far(), 20) <= best_after(log.best_so_far(), 40) <= tab10.optimum


def test_nars_pool_is_the_searchs_sobol_pool_and_budgets_share_their_prefix(tab10):
    pool = build_pool(tab10.space, 300, seed=4, window=None)
    ids = sobol_pool(tab10, 300, seed=4)
    assert [tab10.names[i] for i in ids] == [tab10.space.arch_of(v) for v in pool.values]
    settings = NARSSettings(pool_n=2048, m=6, predictor={"hidden": [32], "head_hidden": 16, "pretrain_epochs": 2,
                                                        "refit_frozen_epochs": 8, "refit_full_epochs": 8,
                                                        "refit_batch_size": 1024},
                            stage3={"max_generations": 4, "population": 16, "top_k": 8}, spearman_at=(12,))
    both = nars(tab10, [10, 20], seed=1, settings=settings)
    alone = nars(tab10, [10], seed=1, settings=settings)
    assert both.logs[10].order == alone.logs[10].order and both.winners[10] == alone.winners[10]
    for b in (10, 20):
        log = both.logs[b]
        assert log.used <= b and both.winners[b][0] in log.seen      # the winner is a query
    assert set(both.spearman) == {12} and -1 <= both.spearman[12] <= 1


def test_nars_local_rounds_take_neighbours_of_the_best_measured_and_winners_are_fresh_queries(tab10):
    settings = NARSSettings(pool_n=2048, m=6, predictor={"hidden": [32], "head_hidden": 16, "pretrain_epochs": 2,
                                                        "refit_frozen_epochs": 8, "refit_full_epochs": 8,
                                                        "refit_batch_size": 1024},
                            stage3={"max_generations": 4, "population": 16, "top_k": 8},
                            local_fraction=0.5, local_parents=2, winners=2)
    res = nars(tab10, [20, 30], seed=2, settings=settings)
    assert res.logs[20].order == nars(tab10, [20], seed=2, settings=settings).logs[20].order
    log = res.logs[30]
    assert log.used == 30 and len(res.winners[30]) == 2 and log.order[-2:] == res.winners[30]  # 2 fresh queries
    order = log.order
    for start in range(6, 28, 6):   # every later round: half one-edge neighbours of the 2 best measured before it
        n_local = min(3, 28 - start)   # a round cut short keeps the first of its 6
        before = order[:start]
        best = sorted(before, key=lambda a: -log.seen[a])[:2]
        near = set(neighbours(tab10, best).tolist())
        assert all(a in near for a in order[start:start + n_local]), start
    assert all(sum(x != y for x, y in zip(tab10.index[a], tab10.index[order[0]])) == 1
               for a in neighbours(tab10, [order[0]]))
    plain = nars(tab10, [30], seed=2, settings=NARSSettings(**{**settings.__dict__, "local_fraction": 0.0,
                                                                 "winners": None}))
    assert plain.logs[30].order[:6] == order[:6] and plain.logs[30].order != order   # same round 1, then differ


def test_runner_local_rounds_are_mutants_of_the_best_measured(tmp_path, c10):
    cfg = load_config("nas_bench_201", NB_ARGS + ["stage2.local_fraction=1.0", "stage2.local_parents=1"])
    run_search(cfg, str(tmp_path / "r"), report=False, stages=(1, 2))
    store = RunStore(str(tmp_path / "r"))
    try:
        r1 = store.candidates(rnd=1, status="ok")
        r2 = store.candidates(rnd=2)
    finally:
        store.close()
    best = max(r1, key=lambda r: r["top1"][-1])
    assert len(r2) == 5
    assert all(0 < sum(r["values"][k] != best["values"][k] for k in best["values"]) <= 3 for r in r2)
    scores = [r["predicted"] for r in r2]
    assert scores == sorted(scores, reverse=True)


def test_benchmark_quick_run_writes_the_documented_schema(tmp_path):
    spec = importlib.util.spec_from_file_location("nb201_bench", os.path.join(ROOT, "benchmarks", "nas_bench_201.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "out"
    assert bench.main(["--quick", "--workers", "1", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert set(data) == {"datasets"} and set(data["datasets"]) == {"cifar10", "cifar100"}
    optima = {"cifar10": 94.3733, "cifar100": 73.5133}
    for ds, entry in data["datasets"].items():
        assert set(entry) == {"optimum", "methods"} and entry["optimum"] == pytest.approx(optima[ds])
        assert set(entry["methods"]) == {"nars", "nars_nopretrain", "rea", "random"}
        for method, by_budget in entry["methods"].items():
            assert set(by_budget) == {"20", "50"}
            for stats in by_budget.values():
                assert set(stats) == {"mean", "std", "n"} and stats["n"] == 2
                assert 0 < stats["mean"] <= entry["optimum"] and stats["std"] >= 0
            if method in ("rea", "random"):
                assert by_budget["20"]["mean"] <= by_budget["50"]["mean"]
    assert (out / "results.md").exists() and (out / "cifar10.png").exists() and (out / "cifar100.png").exists()
    details = json.loads((out / "details.json").read_text())
    assert details["rea"] == {"population": 20, "sample": 5}
    assert bench.main(["--quick", "--workers", "1", "--methods", "nars,sgd", "--out", str(out)]) == 2
