"""The three NARS stages on the synthetic oracle: early stop, predictor, GA, runs, outputs."""

import dataclasses

import numpy as np
import pytest

from fbnet_zoo import build_model, count_flops
from fbnet_zoo.search.config import PredictorConfig, SearchConfigError, Stage3Config, load_config
from fbnet_zoo.search.early_stop import rank_corr_by_epoch, select_early_stop_epoch
from fbnet_zoo.search.encoding import Encoder
from fbnet_zoo.search.evolution import AdaptiveGA
from fbnet_zoo.search.oracle import Oracle
from fbnet_zoo.search.pool import build_pool
from fbnet_zoo.search.predictor import Predictor, rank_corr
from fbnet_zoo.search.runner import SearchRun, run_search
from fbnet_zoo.search.store import RunStore

ORACLE = ["executor.kind=oracle", "family.enabled=false"]


# ---------------------------------------------------------------------------- early stop
def test_early_stop_picks_the_first_epoch_whose_ranking_matches_the_final_one():
    final = np.array([50.0, 60.0, 55.0, 70.0, 65.0, 45.0])
    order = np.argsort(final)
    curves = []
    for i, f in enumerate(final):
        # epochs 1-2: rank reversed; epoch 3: two neighbours swapped (tau 13/15 = 0.87);
        # epoch 4 on: the final ranking (tau 1)
        rank = int(np.where(order == i)[0][0])
        e1 = 10.0 + (5 - rank)
        swapped = {0: 1, 1: 0}.get(rank, rank)
        e3 = 30.0 + swapped
        curves.append([e1, e1 + 1, e3, f - 3, f - 1, f])
    e, corrs = select_early_stop_epoch(curves, 0.92, "kendall")
    assert corrs[0] == pytest.approx(-1.0) and corrs[2] == pytest.approx(13 / 15)
    assert e == 4
    assert select_early_stop_epoch(curves, 0.8, "kendall")[0] == 3
    assert select_early_stop_epoch(curves, 0.92, "spearman")[0] == 3  # rho = 0.94 at epoch 3
    assert select_early_stop_epoch(curves[:2], 0.92)[0] == 6          # too few curves: full length
    assert rank_corr_by_epoch(curves)[-1] == pytest.approx(1.0)


# ---------------------------------------------------------------------------- predictor
@pytest.fixture(scope="module")
def default_space():
    return load_config("default").search_space


def test_predictor_pretraining_learns_flops_and_refits_deterministically(default_space):
    space = default_space
    enc = Encoder(space)
    pool = build_pool(space, 512, seed=0, window=None)
    x = enc.encode_units(pool.units)
    p = Predictor(enc.width, [64, 64], 32, seed=0, settings=PredictorConfig(batch_size=64))
    rep = p.pretrain(x, pool.flops, pool.params, seed=1, epochs=30)
    assert rep.val_rank_corr["flops"] > 0.9 and rep.val_rank_corr["params"] > 0.9
    assert rep.val_mse < 0.2
    proxy = p.predict_proxy(x[:50])
    assert rank_corr(proxy[:, 0], pool.flops[:50]) > 0.85
    oracle = Oracle(space, seed=0)
    y = np.array([oracle.final_top1(v) for v in pool.values[:40]])
    a = Predictor.from_bytes(p.to_bytes())
    b = Predictor.from_bytes(p.to_bytes())
    a.refit(x[:40], y, seed=3, frozen_epochs=20, full_epochs=20)
    b.refit(x[:40], y, seed=3, frozen_epochs=20, full_epochs=20)
    assert a.to_bytes() == b.to_bytes()
    # frozen phase leaves the pretrained encoder alone
    c = Predictor.from_bytes(p.to_bytes())
    c.refit(x[:40], y, seed=3, frozen_epochs=10, full_epochs=0)
    for k, v in c.net.encoder.state_dict().items():
        assert np.array_equal(v.numpy(), p.net.encoder.state_dict()[k].numpy())
    assert rank_corr(a.predict(x[:40]), y) > 0.5


def test_recipe_columns_are_the_recipe_dimensions_features(default_space):
    enc = Encoder(default_space)
    cols = enc.recipe_columns()
    names = enc.names
    assert [[names[c] for c in g] for g in cols["choices"]] == [["recipe.optimizer=rmsprop", "recipe.optimizer=sgd"]]
    assert [names[c] for c in cols["numbers"]] == ["recipe.lr", "recipe.weight_decay", "recipe.dropout",
                                                   "recipe.mixup"]


def test_proxy_ridge_learns_a_recipe_interaction_from_few_labels(default_space):
    """The embedded default's label structure in miniature: the optimizer and its own lr response
    drive accuracy, capacity adds a little. From 20 labels the ridge on the pretrained proxies
    and the recipe ranks 300 unseen candidates well; the MLP refit does not."""
    space = default_space
    enc = Encoder(space)
    pool = build_pool(space, 512, seed=0, window=None)
    x = enc.encode_units(pool.units)
    cfg = PredictorConfig(batch_size=64, hidden=(64, 64), head_hidden=32, refit_frozen_epochs=0,
                          refit_full_epochs=80, refit_full_lr_factor=1.0)
    p = Predictor(enc.width, [64, 64], 32, seed=0, settings=cfg, columns=enc.recipe_columns())
    p.pretrain(x, pool.flops, pool.params, seed=1, epochs=20)
    sgd = np.array([v["recipe.optimizer"] == "sgd" for v in pool.values])
    lr = np.array([v["recipe.lr"] for v in pool.values]) / 0.04
    logf = np.log(pool.flops)
    y = 30 + 12 * sgd + np.where(sgd, 8 * lr, -8 * lr) + 2 * (logf - logf.mean()) / logf.std()
    y = y + np.random.default_rng(0).normal(0, 1.0, len(y))
    fit, held = slice(0, 20), slice(200, 500)
    ridge = Predictor.from_bytes(p.to_bytes(), dataclasses.replace(cfg, refit_model="proxy_ridge"))
    ridge.refit(x[fit], y[fit], seed=3)
    mlp = Predictor.from_bytes(p.to_bytes(), cfg)
    mlp.refit(x[fit], y[fit], seed=3)
    rho_ridge, rho_mlp = rank_corr(ridge.predict(x[held]), y[held]), rank_corr(mlp.predict(x[held]), y[held])
    assert rho_ridge > 0.8 and rho_ridge > rho_mlp + 0.1, (rho_ridge, rho_mlp)
    # predictions are accuracies: the fitted candidates' mean is the labels' mean
    assert abs(ridge.predict(x[fit]).mean() - y[fit].mean()) < 1e-6
    # the fitted ridge travels with the checkpoint (stage 3 and resume load it from there)
    again = Predictor.from_bytes(ridge.to_bytes(), cfg)
    np.testing.assert_array_equal(again.predict(x[held]), ridge.predict(x[held]))


# ---------------------------------------------------------------------------- stage 3
def test_adaptive_ga_only_returns_candidates_meeting_the_constraint(default_space):
    space = default_space
    enc = Encoder(space)
    p = Predictor(enc.width, [32], 16, seed=0)
    pool = build_pool(space, 128, seed=0, window=None)
    oracle = Oracle(space, seed=0)
    y = np.array([oracle.final_top1(v) for v in pool.values])
    p.refit(enc.encode_units(pool.units), y, seed=0, frozen_epochs=30, full_epochs=0)
    ga = AdaptiveGA(space, p, enc, Stage3Config(population=24, top_k=12, max_generations=15, patience=4))
    for bound in (0.5e6, 1.0e6):
        res = ga.run({"flops": bound}, list(pool.units[:8]), seed=1)
        assert res.population and all(ind.flops <= bound for ind in res.population)
        assert count_flops(space.build_arch(res.best.values), None, 10) <= bound
        assert res.history == sorted(res.history)          # top-K survival never loses the best
        assert res.best.score >= max(ind.score for ind in res.population)


# ---------------------------------------------------------------------------- whole pipeline
def _random_search_best(space, oracle, budget, bound, seed):
    rng = np.random.default_rng(seed)
    best, n = -np.inf, 0
    while n < budget:
        v = space.decode(rng.random(space.ndim))
        if count_flops(space.build_arch(v), None, space.num_classes) > bound:
            continue
        n += 1
        best = max(best, oracle.final_top1(v))
    return best


def test_full_pipeline_beats_random_search_with_the_same_budget(tmp_path):
    margins = []
    bound = 1.5e6
    for seed in (0, 1, 2):
        cfg = load_config("default", ORACLE + [f"seed={seed}", f"oracle.seed={seed}", "stage2.rounds=4",
                                               "stage2.m=8", f"stage3.constraints=['flops<={bound:g}']"])
        summary = run_search(cfg, str(tmp_path / f"run{seed}"), report=False)
        winner = next(iter(summary["results"].values()))
        assert winner["flops"] <= bound
        space = cfg.search_space
        oracle = Oracle(space, seed, cfg.oracle.hidden, cfg.oracle.noise)
        found = oracle.final_top1(winner["values"])
        budget = cfg.stage2.budget
        random_best = np.mean([_random_search_best(space, oracle, budget, bound, 100 * seed + r) for r in range(10)])
        margins.append(found - random_best)
    assert all(m > 0 for m in margins), margins
    assert np.mean(margins) > 0.5, margins


def test_stage3_meets_each_constraint_and_winners_build_by_name(tmp_path):
    cfg = load_config("default", ["executor.kind=oracle", "stage3.constraints=['flops<=0.7M', 'flops<=1M&params<=40K']"])
    arch_dir = tmp_path / "my_archs"
    summary = run_search(cfg, str(tmp_path / "exp1"), install_dir=str(arch_dir))
    res = summary["results"]
    assert set(res) == {"0p7m", "1m_0p04mp"}
    assert res["0p7m"]["flops"] <= 0.7e6
    assert res["1m_0p04mp"]["flops"] <= 1e6 and res["1m_0p04mp"]["params"] <= 40e3
    names = {o["name"] for o in summary["outputs"]}
    assert "fbnetv3_search_exp1_0p7m" in names and "fbnetv3_search_exp1_0p7m_down" in names
    assert (arch_dir / "fbnetv3_search_exp1_0p7m.yaml").exists()
    assert (tmp_path / "exp1" / "recipes" / "fbnetv3_search_exp1_0p7m.yaml").exists()
    model = build_model("fbnetv3_search_exp1_0p7m", num_classes=10)
    assert count_flops(model.spec, None, 10) == res["0p7m"]["flops"]
    report = (tmp_path / "exp1" / "report.md").read_text()
    assert "fbnetv3_search_exp1_0p7m" in report
    for plot in ("proxy_fit", "predicted_vs_measured", "rank_corr_vs_epoch", "rounds_acc_vs_flops", "pareto"):
        assert (tmp_path / "exp1" / "plots" / f"{plot}.png").exists()


def test_unmeetable_constraint_fails_before_any_training(tmp_path):
    cfg = load_config("default", ["executor.kind=oracle", "stage3.constraints=['flops<=0.1M']"])

    class Boom:
        def run(self, *a, **k):
            raise AssertionError("trained although the constraint cannot be met")

        def close(self):
            pass

    with pytest.raises(SearchConfigError, match=r"flops <= 100000 cannot be met.*smallest candidate"):
        run_search(cfg, str(tmp_path / "r"), executor=Boom())
    assert not RunStore.exists(str(tmp_path / "r"))  # nothing written: the same dir can be used again


def test_resume_with_a_different_config_is_a_clear_error(tmp_path):
    cfg = load_config("default", ORACLE + ["stage2.rounds=1", "stage2.m=3"])
    run_search(cfg, str(tmp_path / "r"), stages=(1,), report=False)
    other = load_config("default", ORACLE + ["stage2.rounds=1", "stage2.m=4"])
    with pytest.raises(SearchConfigError, match=r"different config.*stage2.m: 3 != 4"):
        run_search(other, str(tmp_path / "r"), resume=True)
    with pytest.raises(SearchConfigError, match="already holds a run"):
        run_search(cfg, str(tmp_path / "r"))
    with pytest.raises(SearchConfigError, match="holds no search run"):
        run_search(cfg, str(tmp_path / "nothing"), resume=True)
    # the same config (another executor placement is fine) continues with stage 2 and 3
    summary = run_search(cfg, str(tmp_path / "r"), resume=True, stages=(2, 3), report=False)
    assert summary["results"]


def test_failed_candidates_are_stored_with_their_reason_and_the_search_goes_on(tmp_path):
    from fbnet_zoo.search.candidate import TrainResult

    class HalfBroken:
        def __init__(self, space, values_of):
            self.oracle = Oracle(space, 0)
            self.values_of = values_of

        def run(self, cands, epochs, on_result):
            for i, c in enumerate(cands):
                if i % 3 == 0:
                    on_result(TrainResult(c.key, "failed", error="loss is NaN at epoch 1", epochs_planned=epochs))
                else:
                    f = self.oracle.final_top1(self.values_of(c))
                    on_result(TrainResult(c.key, "ok", top1=self.oracle.curve(c.key, f, epochs, c.recipe.epochs),
                                          epochs_planned=epochs))

        def close(self):
            pass

    cfg = load_config("default", ORACLE + ["stage2.rounds=2", "stage2.m=6"])
    run = SearchRun(cfg, str(tmp_path / "r"))
    run._executor = HalfBroken(run.space, run._values_of)
    run.stage1()
    run.stage2()
    rows = run.store.candidates()
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(rows) == 12 and len(failed) == 4
    assert all(r["error"] == "loss is NaN at epoch 1" for r in failed)
    assert run.stage3()
    run.close()


# ---------------------------------------------------------------------------- the CLI
def _cli():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "search.py")
    spec = importlib.util.spec_from_file_location("search_cli", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_cli_runs_stages_separately_and_reports_bad_input_as_errors(tmp_path, capsys):
    main = _cli()
    run = str(tmp_path / "cli")
    common = ["--no-progress"]
    assert main(["default", "stage2.rounds=2", "stage2.m=3", "family.enabled=false", "--executor", "oracle",
                 "--run-dir", run, "--stage", "1"] + common) == 0
    assert RunStore(run).get_progress("stage1")["status"] == "done"
    assert main(["--resume", run, "--executor", "oracle", "--stage", "2", "--stage", "3"] + common) == 0
    out = capsys.readouterr().out
    assert "fbnetv3_search_cli_0p8m" in out and "report:" in out
    assert main(["default", "stage2.mm=3"] + common) == 2
    assert "stage2.mm: unknown key" in capsys.readouterr().err
    assert main(["default", "--executor", "oracle", "--constraints", "flops<=1K", "--run-dir",
                 str(tmp_path / "x")] + common) == 2
    assert "cannot be met" in capsys.readouterr().err
    assert main(["--resume", run, "seed=9"] + common) == 2
    assert "different config" in capsys.readouterr().err
    assert main(["default", "train.bogus=1", "--run-dir", str(tmp_path / "y")] + common) == 2
    assert "bogus" in capsys.readouterr().err
