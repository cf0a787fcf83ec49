"""Executors: local and Ray evaluate batches, hand results over as each candidate finishes,
survive failing candidates and (Ray) workers killed mid-candidate."""

import os

import pytest

from fbnet_zoo.search.candidate import Candidate, TrainResult
from fbnet_zoo.search.executors import (Executor, ExecutorError, LocalExecutor, candidate_dir, executor_kinds,
                                        make_executor, register_executor)
from fbnet_zoo.search.trainer import train_candidate
from fbnet_zoo.spec import ArchSpec
from fbnet_zoo.training import CHECKPOINT_NAME, Recipe, TrainConfigError

TINY = ArchSpec.from_dict({"name": "tiny", "input_size": 32, "stages": [
    [{"type": "conv", "out_channels": 8, "stride": 2, "act": "hswish"}],
    [{"type": "ir", "out_channels": 8, "expansion": 1, "act": "hswish"}],
    [{"type": "ir", "out_channels": 16, "stride": 2, "expansion": 3, "act": "hswish"}],
    [{"type": "ir_pool", "out_channels": 32, "expansion": 4, "act": "hswish"}]]})
TRAIN = {"dataset": "embedded", "embedded_train_size": 96, "embedded_val_size": 40, "threads": 1}
BASE = Recipe(optimizer="sgd", lr=0.02, batch_size=32, ema=False, resolution=32, mixup=0.0)


def batch():
    return [Candidate("a", TINY, BASE), Candidate("nan", TINY, BASE.replace(lr=1e6)),
            Candidate("b", TINY, BASE.replace(optimizer="rmsprop", lr=0.005, ema=True))]


def test_local_executor_hands_over_each_result_as_it_finishes(tmp_path):
    events = []

    def train_fn(cand, epochs, settings, workdir, progress=True):
        events.append(("start", cand.key))
        return train_candidate(cand, epochs, settings, workdir, progress=progress)

    with make_executor("local", TRAIN, str(tmp_path), progress=False, train_fn=train_fn) as ex:
        assert isinstance(ex, LocalExecutor)
        ex.run(batch(), 2, lambda r: events.append(("result", r.key, r.status, r.error)))
    assert [e[:2] for e in events] == [("start", "a"), ("result", "a"), ("start", "nan"), ("result", "nan"),
                                       ("start", "b"), ("result", "b")]
    status = {e[1]: e[2] for e in events if e[0] == "result"}
    assert status == {"a": "ok", "nan": "failed", "b": "ok"}  # the NaN candidate did not stop the batch
    assert "diverged" in [e[3] for e in events if e[1] == "nan" and e[0] == "result"][0]
    assert os.path.isfile(os.path.join(candidate_dir(str(tmp_path), "a"), CHECKPOINT_NAME))
    assert candidate_dir(str(tmp_path), "a") == os.path.join(str(tmp_path), "candidates", "a")


def test_make_executor_validates_and_dispatches(tmp_path):
    with pytest.raises(ExecutorError, match="executor.kind: 'slurm' is not one of"):
        make_executor("slurm", TRAIN, str(tmp_path))
    with pytest.raises(TrainConfigError, match=r"train\.epochz: unknown key"):
        make_executor("local", {"epochz": 3}, str(tmp_path))
    assert {"local", "ray", "oracle"} <= set(executor_kinds())

    class Recorder(Executor):
        def __init__(self, train, run_dir, **opts):
            self.args = (train, run_dir, opts)

        def run(self, candidates, epochs, on_result):
            for c in candidates:
                on_result(TrainResult(c.key, "ok", top1=[1.0] * epochs))

    register_executor("recorder", Recorder)
    ex = make_executor("recorder", TRAIN, str(tmp_path), num_cpus_per_candidate=3, flavour="x")
    assert ex.args[2]["num_cpus_per_candidate"] == 3 and ex.args[2]["flavour"] == "x"
    with pytest.raises(ExecutorError, match="already registered"):
        register_executor("recorder", Recorder)
    with pytest.raises(ExecutorError, match="duplicate keys"):
        make_executor("local", TRAIN, str(tmp_path)).run([batch()[0], batch()[0]], 1, print)


def test_oracle_kind_is_found_lazily(tmp_path):
    from fbnet_zoo.search.config import load_config
    from fbnet_zoo.search.oracle import OracleExecutor

    cfg = load_config(None)
    ex = make_executor("oracle", cfg.train, str(tmp_path), space=cfg.search_space, seed=1,
                       values_of=lambda c: None)
    assert isinstance(ex, OracleExecutor) and ex.oracle.seed == 1


# ---------------------------------------------------------------------------------- Ray

ray = pytest.importorskip("ray", reason="the ray executor needs the ray package")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_batch_and_a_worker_killed_mid_candidate_is_retried(ray_cluster, tmp_path):
    marker_dir = str(tmp_path / "markers")
    os.makedirs(marker_dir)

    def crash_once(cand, epochs, settings, workdir, progress=False):
        # The first attempt at candidate "b" kills its worker process after epoch 1 was
        # checkpointed, like a preempted node; Ray's retry must resume and finish it.
        import os as _os

        from fbnet_zoo.search.trainer import train_candidate as _train

        marker = _os.path.join(marker_dir, cand.key)

        def on_epoch_end(epoch, partial):
            if cand.key == "b" and epoch == 0 and not _os.path.exists(marker):
                open(marker, "w").close()
                _os._exit(1)

        _os.makedirs(_os.path.join(marker_dir, "attempts"), exist_ok=True)
        with open(_os.path.join(marker_dir, "attempts", cand.key), "a") as f:
            f.write("x")
        return _train(cand, epochs, settings, workdir, progress=False, on_epoch_end=on_epoch_end)

    run_dir = str(tmp_path / "run")
    results = []
    with make_executor("ray", TRAIN, run_dir, num_cpus_per_candidate=1, max_retries=2, progress=False,
                       train_fn=crash_once) as ex:
        ex.run(batch(), 2, results.append)
    keys = [r.key for r in results]
    assert sorted(keys) == ["a", "b", "nan"]  # every result handed over exactly once
    by_key = {r.key: r for r in results}
    assert by_key["a"].ok and len(by_key["a"].top1) == 2
    assert by_key["nan"].status == "failed" and "diverged" in by_key["nan"].error
    b = by_key["b"]
    assert b.ok, b.error
    assert os.path.exists(os.path.join(marker_dir, "b"))  # the worker really died once
    with open(os.path.join(marker_dir, "attempts", "b")) as f:
        assert f.read() == "xx"
    assert b.extra.get("resumed_from") == 1 and len(b.top1) == 2  # resumed from its epoch-1 checkpoint
    assert ray.is_initialized()  # the executor did not shut down a Ray it did not start

    # same candidate trained locally gives the same curve: the kill + resume changed nothing
    local = train_candidate(batch()[2], 2, TRAIN, progress=False)
    assert local.top1 == b.top1


def test_ray_gives_up_after_max_retries_with_a_retryable_result(ray_cluster, tmp_path):
    # a lost worker is the environment's failure: the search retrains it on --resume
    def always_die(cand, epochs, settings, workdir, progress=False):
        import os as _os

        _os._exit(3)

    results = []
    with make_executor("ray", TRAIN, str(tmp_path), max_retries=1, progress=False, train_fn=always_die) as ex:
        ex.run(batch()[:1], 1, results.append)
    assert len(results) == 1 and results[0].status == "retryable"
    assert "ray task failed (WorkerCrashedError)" in results[0].error


def test_a_task_that_raises_an_os_error_is_retryable_a_diverging_one_is_not(ray_cluster, tmp_path):
    def fail(cand, epochs, settings, workdir, progress=False):
        if cand.key == "a":
            raise OSError(28, "No space left on device")
        return TrainResult(cand.key, "failed", error="diverged: loss is nan at epoch 1", epochs_planned=epochs)

    results = {}
    with make_executor("ray", TRAIN, str(tmp_path), max_retries=0, progress=False, train_fn=fail) as ex:
        ex.run(batch()[:2], 1, lambda r: results.__setitem__(r.key, r))
    assert results["a"].status == "retryable" and "OSError" in results["a"].error
    assert results["nan"].status == "failed"


def test_ray_reserves_gpus_for_device_auto_when_the_cluster_has_them():
    from fbnet_zoo.search.executors import gpu_reservation

    assert gpu_reservation(0, "auto", cluster_gpus=8) == (1.0, "cuda")    # reserved by default
    assert gpu_reservation(0.5, "auto", cluster_gpus=8) == (0.5, "cuda")  # told how many
    assert gpu_reservation(0, "auto", cluster_gpus=0) == (0.0, "cpu")     # no GPUs: pinned to the CPU
    assert gpu_reservation(0, "cpu", cluster_gpus=8) == (0, "cpu")        # told otherwise
    assert gpu_reservation(1, "cpu", cluster_gpus=8) == (1, "cuda")
