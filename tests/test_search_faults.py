"""Hostile input and faults around a search run (issue 16 items 3, 4, 5, 10): bad seeds and
config bytes, broken run stores, a second process on a run dir, constraints nothing meets,
rounds with nothing measured, environment failures retried on resume, unreadable data."""

import importlib.util
import os
import sqlite3

import pytest

from fbnet_zoo.search.candidate import TrainResult
from fbnet_zoo.search.config import SearchConfigError, SearchRunError, load_config
from fbnet_zoo.search.executors import Executor, classify_failure, executor_kinds, register_executor
from fbnet_zoo.search.oracle import make_oracle_executor
from fbnet_zoo.search.runner import SearchRun, run_search
from fbnet_zoo.search.store import DB_NAME, RunLock, RunStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["executor.kind=oracle", "family.enabled=false", "stage2.rounds=2", "stage2.m=3", "pool.n=128",
        "predictor.pretrain_epochs=2", "predictor.refit_frozen_epochs=2", "predictor.refit_full_epochs=2",
        "stage3.population=8", "stage3.top_k=4", "stage3.max_generations=2"]


def _tool():
    spec = importlib.util.spec_from_file_location("search_tool", os.path.join(ROOT, "tools", "search.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _trained(run_dir):
    path = os.path.join(run_dir, "oracle_trained.log")
    return open(path).read().split() if os.path.exists(path) else []


# ------------------------------------------------------------------------ flaky executors (registry kinds)
class _Flaky(Executor):
    """The oracle, except that candidates named in ``fail`` come back failed with that error."""

    fail = {}  # key -> error, set by the test

    def __init__(self, train, run_dir, **context):
        self.inner = make_oracle_executor(run_dir=run_dir, **context)

    def run(self, candidates, epochs, on_result):
        def hand_over(res):
            err = _Flaky.fail.get(res.key)
            if err is not None:
                res = classify_failure(TrainResult(res.key, "failed", error=err, epochs_planned=epochs))
            on_result(res)

        self.inner.run(candidates, epochs, hand_over)


class _AllFail(_Flaky):
    def run(self, candidates, epochs, on_result):
        for c in candidates:
            on_result(TrainResult(c.key, "failed", error="diverged: loss is nan at epoch 1", epochs_planned=epochs))


register_executor("test_flaky", _Flaky, overwrite=True)
register_executor("test_all_fail", _AllFail, overwrite=True)


# ------------------------------------------------------------------------ item 10: config bytes and seeds
@pytest.mark.parametrize("key,value", [("seed", "-1"), ("seed", str(2 ** 70)), ("oracle.seed", "-3")])
def test_seeds_outside_32_bits_are_refused_at_config_time(key, value):
    with pytest.raises(SearchConfigError, match=rf"^{key}: {value} is outside \[0, 4294967295\]"):
        load_config("default", [f"{key}={value}"])
    assert load_config("default", [f"seed={2 ** 32 - 1}"]).seed == 2 ** 32 - 1


def test_a_config_that_is_not_utf8_is_a_config_error_naming_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SearchConfigError, match=rf"{path}: not UTF-8 text"):
        load_config(str(path))


def test_run_dir_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("x")
    with pytest.raises(SearchConfigError, match="is a file, not a directory"):
        SearchRun(load_config("default", TINY), str(f))
    assert _tool().main(["default"] + TINY + ["--run-dir", str(f), "--no-progress"]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert f.read_text() == "x"


def test_an_install_dir_that_is_a_file_and_bad_yaml_fail_before_anything_runs(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("x")
    # was found only when the winners were copied, after every candidate had trained
    with pytest.raises(SearchConfigError, match="install_dir: .*taken' is a file, not a folder"):
        run_search(load_config("default", TINY), str(tmp_path / "run"), install_dir=str(taken))
    assert not (tmp_path / "run").exists() and taken.read_text() == "x"
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\n  stage2: [\n")
    with pytest.raises(SearchConfigError, match="bad.yaml: not valid YAML") as info:
        load_config(str(bad))
    assert "\n" not in str(info.value)                             # yaml's caret drawing, on one line


def test_overrides_may_follow_options(tmp_path, capsys):
    # was argparse's "unrecognized arguments: seed=-1" (positionals after an option)
    run_dir = tmp_path / "run"
    assert _tool().main(["default", "--run-dir", str(run_dir), "seed=-1", "--no-progress"]) == 2
    assert "seed: -1 is outside [0, 4294967295]" in capsys.readouterr().err
    assert not run_dir.exists()


def test_unknown_executor_kind_lists_the_registered_ones():
    with pytest.raises(SearchConfigError, match=r"executor.kind: 'slurm' is not a registered executor kind; "
                                                r"registered: \[.*'local'.*'oracle'.*'ray'"):
        load_config("default", ["executor.kind=slurm"])
    assert {"test_flaky", "oracle", "local", "ray"} <= set(executor_kinds())


# ------------------------------------------------------------------------ item 10: broken stores
@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("stage1") / "run")
    run_search(load_config("default", TINY), run_dir, stages=(1,), report=False)
    return run_dir


def _copy_store(src_dir, dst_dir):
    os.makedirs(dst_dir)
    con = sqlite3.connect(os.path.join(src_dir, DB_NAME))  # a consistent copy (WAL checkpointed)
    out = sqlite3.connect(os.path.join(dst_dir, DB_NAME))
    con.backup(out)
    out.close()
    con.close()
    return os.path.join(dst_dir, DB_NAME)


def test_a_zero_byte_store_is_refused_and_left_untouched(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / DB_NAME).write_bytes(b"")
    with pytest.raises(SearchRunError, match=rf"{run_dir / DB_NAME}: the run store is empty \(0 bytes\)"):
        run_search(None, str(run_dir), resume=True)
    assert os.path.getsize(run_dir / DB_NAME) == 0


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_or_truncated_store_is_an_error_naming_the_file(stage1_run, tmp_path, damage):
    db = _copy_store(stage1_run, str(tmp_path / "run"))
    data = open(db, "rb").read()
    with open(db, "wb") as f:
        f.write(os.urandom(len(data)) if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(SearchRunError, match=rf"{db}: cannot use this run store .*corrupt, truncated or read-only"):
        run_search(None, str(tmp_path / "run"), resume=True)


def test_a_read_only_store_is_an_error_naming_it(stage1_run, tmp_path):
    db = _copy_store(stage1_run, str(tmp_path / "run"))
    os.chmod(db, 0o444)
    try:
        with pytest.raises(SearchRunError, match=rf"{db}: read-only"):
            run_search(None, str(tmp_path / "run"), resume=True)
    finally:
        os.chmod(db, 0o644)


# ------------------------------------------------------------------------ item 4: one process per run dir
def test_a_second_process_on_a_run_dir_is_told_who_holds_it(stage1_run, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    _copy_store(stage1_run, run_dir)
    holder = RunLock(run_dir)  # flock is per open file: a second open conflicts even in this process
    try:
        with pytest.raises(SearchRunError, match=rf"is in use by pid {os.getpid()} on \S+, started 20"):
            run_search(None, run_dir, resume=True)
        assert _tool().main(["--resume", run_dir, "--no-progress"]) == 3
        assert f"in use by pid {os.getpid()}" in capsys.readouterr().err
    finally:
        holder.release()
    RunLock(run_dir).release()  # free again once the holder let go


# ------------------------------------------------------------------------ item 5: constraints
def test_a_joint_constraint_no_pool_point_meets_is_refused_before_training(tmp_path):
    # the smallest point of the default space meets flops<=0.3M and params<=19500 (284,800 and
    # 19,402), but none of the pool does both: stage 3 would fail only after all the training
    cfg = load_config("default", TINY + ["stage3.constraints=['flops<=0.3M&params<=19500']"])
    run_dir = str(tmp_path / "run")
    with pytest.raises(SearchConfigError, match=r"flops<=300000&params<=19500 is met by none of the 128 pool"):
        run_search(cfg, run_dir)
    assert _trained(run_dir) == []
    store = RunStore(run_dir, create=False)
    try:
        assert store.load_checkpoint("stage1") is None and store.candidates() == []
    finally:
        store.close()


def test_stage3_settings_change_on_resume_and_training_settings_do_not(tmp_path):
    run_dir = str(tmp_path / "run")
    run_search(load_config("default", TINY), run_dir, stages=(1, 2), report=False)
    trained = _trained(run_dir)
    assert len(trained) == 6
    with pytest.raises(SearchConfigError, match=r"stage2.m: 3 != 4.*only \['executor', 'stage3', 'family', "
                                                r"'output'\] may change on resume"):
        run_search(load_config("default", TINY + ["stage2.m=4"]), run_dir, resume=True)
    first = run_search(load_config("default", TINY + ["stage3.constraints=['flops<=0.9M']"]), run_dir,
                       resume=True, report=False)
    again = run_search(load_config("default", TINY + ["stage3.constraints=['flops<=0.9M']",
                                                      "stage3.max_generations=3"]), run_dir, resume=True,
                       report=False)
    assert list(first["results"]) == list(again["results"]) == ["0p9m"]
    assert first["results"]["0p9m"]["generations"] <= 2
    assert first["results"]["0p9m"]["stage3_digest"] != again["results"]["0p9m"]["stage3_digest"]  # recomputed
    assert _trained(run_dir) == trained  # nothing trained again
    # on the command line, --constraints alone edits the run's own config
    assert _tool().main(["--resume", run_dir, "--constraints", "flops<=1M", "--no-progress"]) == 0
    store = RunStore(run_dir, create=False)
    try:
        assert "1m" in store.results() and store.get_meta("config")["stage2"]["m"] == 3
        assert store.get_meta("config")["stage3"]["constraints"] == [{"flops": 1e6}]
    finally:
        store.close()
    assert _trained(run_dir) == trained


# ------------------------------------------------------------------------ item 3: nothing from nothing
def test_a_round_with_nothing_measured_stops_the_run_and_publishes_nothing(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    code = _tool().main(["default"] + TINY + ["executor.kind=test_all_fail", "--run-dir", run_dir, "--no-progress"])
    assert code == 3
    err = capsys.readouterr().err
    assert "stage 2 round 1: no candidate was measured (all 3 failed: diverged: loss is nan" in err
    assert "nothing is published" in err
    assert not os.path.exists(os.path.join(run_dir, "archs")) and not os.path.exists(os.path.join(run_dir, "recipes"))
    store = RunStore(run_dir, create=False)
    try:
        assert store.results() == {} and store.load_checkpoint("round1") is None
    finally:
        store.close()
    # a diverging recipe is the candidate's own failure: resuming does not retrain it
    with pytest.raises(SearchRunError, match="no candidate was measured"):
        run_search(None, run_dir, resume=True, report=False)


def test_environment_failures_stop_the_run_and_are_retrained_on_resume(tmp_path):
    run_dir = str(tmp_path / "run")
    cfg = load_config("default", TINY + ["executor.kind=test_flaky"])
    run = SearchRun(cfg, run_dir)
    try:
        run.stage1()
        run._select(1, None)
        keys = run.store.get_round(1)["keys"]
    finally:
        run.close()
    _Flaky.fail = {keys[0]: "OSError: [Errno 28] No space left on device", keys[1]: "diverged: loss is nan"}
    with pytest.raises(SearchRunError, match=rf"round 1: 1 of 3 candidates failed because of the environment "
                                             rf"\(first: {keys[0]}: OSError.*--resume"):
        run_search(None, run_dir, resume=True, report=False)
    status = {c["key"]: c["status"] for c in RunStore(run_dir, create=False).candidates()}
    assert status == {keys[0]: "retryable", keys[1]: "failed", keys[2]: "ok"}
    _Flaky.fail = {}  # the disk has space again
    summary = run_search(None, run_dir, resume=True, report=False)
    store = RunStore(run_dir, create=False)
    try:
        status = {c["key"]: c["status"] for c in store.candidates(rnd=1)}
    finally:
        store.close()
    assert status == {keys[0]: "ok", keys[1]: "failed", keys[2]: "ok"}
    assert _trained(run_dir).count(keys[0]) == 2 and _trained(run_dir).count(keys[1]) == 1
    assert summary["outputs"]


def test_unreadable_training_data_fails_before_anything_trains(tmp_path):
    missing = str(tmp_path / "no_cifar_here")
    cfg = load_config("default", TINY + ["executor.kind=local", "train.dataset=cifar10", f"train.data_dir={missing}"])
    run_dir = str(tmp_path / "run")
    with pytest.raises(SearchRunError, match=rf"training data: dataset 'cifar10' at {missing} cannot be read"):
        run_search(cfg, run_dir)
    store = RunStore(run_dir, create=False)
    try:
        assert store.load_checkpoint("stage1") is None and store.candidates() == []
    finally:
        store.close()
