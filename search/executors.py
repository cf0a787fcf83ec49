"""Executors: where candidates train. One interface, several placements.

    executor = make_executor("local", {"dataset": "embedded"}, run_dir)
    executor.run(candidates, epochs, on_result)     # on_result(TrainResult) as EACH one finishes
    executor.close()

- ``local``: in this process, one candidate after another.
- ``ray``: each candidate is a Ray task (``num_cpus`` / ``num_gpus`` per candidate; with
  ``train.device: auto`` one GPU per candidate when the cluster has GPUs) on a cluster
  joined with ``ray.init(address=...)`` ("auto" for the cluster this machine belongs to; None
  starts a local one, or reuses an already initialised Ray). A task whose worker dies
  (preemption, OOM kill, node loss) is retried up to ``max_retries`` times and resumes from its
  last epoch checkpoint; results are handed to ``on_result`` in the driver as tasks finish.
- further kinds register with ``register_executor(kind, factory)``; ``oracle`` (the search's
  synthetic trainer, ``fbnet_zoo.search.oracle``) is found lazily. The search runner creates
  every kind through ``make_executor`` and passes its context (``space``, ``values_of``,
  ``search_config``, ``progress``); a factory takes what it needs and ignores the rest.

A result's status is ``ok``, ``failed`` (the candidate itself failed: diverged, invalid) or
``retryable`` (the environment failed it: an I/O error, a full disk, a lost Ray worker);
``classify_failure`` decides, and the runner trains retryable candidates again on resume.

Every candidate trains in ``<run_dir>/candidates/<key>/`` (its epoch checkpoint lives there),
which on a cluster must be a filesystem every node can reach.
"""

from __future__ import annotations

import builtins
import inspect
import logging
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from torch.utils.data import DataLoader

from fbnet_zoo.errors import ExecutorError  # noqa: F401 - re-exported (its home is fbnet_zoo.errors)
from fbnet_zoo.training import cached_datasets
from fbnet_zoo.training.settings import TrainConfigError, TrainSettings

from .candidate import Candidate, TrainResult
from .trainer import train_candidate

log = logging.getLogger(__name__)

TrainFn = Callable[..., TrainResult]


RETRYABLE = "retryable"
# Exception types (as named in a TrainResult's "Type: message" error) that mean the
# environment failed, not the candidate: every builtin OSError (I/O, ENOSPC, permissions,
# missing files), PIL's unreadable image (an OSError too), a dataset that could not be read,
# and the Ray errors of a lost worker / node / object once its retries are spent.
_ENVIRONMENT_ERRORS = frozenset(
    {n for n, t in vars(builtins).items() if isinstance(t, type) and issubclass(t, OSError)}
    | {"UnidentifiedImageError", "DataError", "WorkerCrashedError", "NodeDiedError", "OwnerDiedError",
       "ObjectLostError", "ObjectReconstructionFailedError", "RaySystemError", "LocalRayletDiedError",
       "TaskUnschedulableError", "OutOfMemoryError", "ActorDiedError", "RayActorError"})


def classify_failure(result: TrainResult) -> TrainResult:
    """``result`` with status ``retryable`` when its error names an environment failure.

    A diverging recipe (NaN loss: "diverged: ...") or an invalid candidate stays ``failed``."""
    if result.status != "failed" or not result.error:
        return result
    err = result.error
    if err.startswith("ray task failed ("):  # "ray task failed (Type): ..."
        name = err[len("ray task failed ("):].split(")", 1)[0]
    else:
        name = err.split(":", 1)[0].strip()
    if name.rsplit(".", 1)[-1] in _ENVIRONMENT_ERRORS:
        return TrainResult(result.key, RETRYABLE, list(result.top1), list(result.loss),
                           list(result.epoch_seconds), err, result.epochs_planned, dict(result.extra))
    return result


def check_training_data(settings: TrainSettings, resolution: int) -> None:
    """Build the datasets and read one batch of each split, in this process, before anything
    trains: a missing data dir or an unreadable file fails here with the path, not as N failed
    candidates. Raises ExecutorError."""
    where = f"dataset {settings.dataset!r}" + (f" at {settings.data_dir}" if settings.data_dir else "")
    try:
        train, val, _ = cached_datasets(settings, resolution)
        for split, ds in (("train", train), ("val", val)):
            if len(ds) == 0:
                raise ExecutorError(f"training data: {where}: the {split} split is empty")
            next(iter(DataLoader(ds, batch_size=min(len(ds), 8), shuffle=False, num_workers=0)))
    except ExecutorError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader error: report it with the data's location
        raise ExecutorError(f"training data: {where} cannot be read: {type(e).__name__}: {e}") from None


def candidate_dir(run_dir: str, key: str) -> str:
    """Working directory of one candidate: ``<run_dir>/candidates/<key>``."""
    safe = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in str(key))
    return os.path.join(run_dir, "candidates", safe)


class Executor:
    """Trains batches of candidates. Subclasses implement ``run``; ``close`` frees resources.

    ``run(candidates, epochs, on_result)`` returns once every candidate has been handed to
    ``on_result`` exactly once (an ``ok`` or ``failed`` TrainResult), called in the calling
    process as each candidate finishes. An exception raised by ``on_result`` stops the batch
    and propagates.
    """

    def run(self, candidates: Sequence[Candidate], epochs: int, on_result: Callable[[TrainResult], None]) -> None:
        raise NotImplementedError

    def check_data(self, resolution: int) -> None:
        """Fail fast (ExecutorError naming the data) if the training data cannot be read."""

    def close(self) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _check_batch(candidates: Sequence[Candidate], epochs: int) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ExecutorError(f"epochs: {epochs!r} is not an integer >= 1")
    keys = [c.key for c in candidates]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ExecutorError(f"candidates: duplicate keys {dup[:5]} in one batch")


class LocalExecutor(Executor):
    """Trains candidates one after another in this process."""

    def __init__(self, settings: TrainSettings, run_dir: str, progress: bool = True,
                 train_fn: Optional[TrainFn] = None):
        self.settings = settings
        self.run_dir = run_dir
        self.progress = progress
        self.train_fn = train_fn or train_candidate

    def run(self, candidates: Sequence[Candidate], epochs: int, on_result: Callable[[TrainResult], None]) -> None:
        _check_batch(candidates, epochs)
        for cand in candidates:
            workdir = candidate_dir(self.run_dir, cand.key)
            try:
                result = self.train_fn(cand, epochs, self.settings, workdir, progress=self.progress)
            except Exception as e:  # noqa: BLE001 - train_candidate never raises; a custom train_fn may
                result = TrainResult(cand.key, "failed", error=f"{type(e).__name__}: {e}", epochs_planned=epochs)
            on_result(classify_failure(result))

    def check_data(self, resolution: int) -> None:
        check_training_data(self.settings, resolution)


def gpu_reservation(requested: float, device: str, cluster_gpus: float) -> Tuple[float, str]:
    """(GPUs per candidate, training device) for a Ray run. ``device: auto`` on a cluster with
    GPUs reserves one GPU per candidate (unless ``requested`` says how many) and trains on CUDA;
    without GPUs, or with ``device: cpu``, candidates reserve none and train on the CPU
    (``auto`` is pinned, so an unreserved GPU is never used). GPUs requested with
    ``device: cpu`` switch the device to CUDA (as before)."""
    if device == "auto":
        gpus = requested if requested > 0 else (1.0 if cluster_gpus >= 1 else 0.0)
        return gpus, "cuda" if gpus > 0 else "cpu"
    if requested > 0 and device == "cpu":
        return requested, "cuda"
    return requested, device


def _ray_train(train_fn: TrainFn, cand: Candidate, epochs: int, settings: TrainSettings, workdir: str,
               threads: int) -> Dict[str, Any]:
    """Body of one Ray task: train and return the result as a plain dict."""
    settings = settings.replace(cpus=max(1, threads))  # data-loader workers fit the cores Ray reserved
    if settings.threads is not None and settings.device == "cpu":
        settings = settings.replace(threads=max(1, threads))
    return train_fn(cand, epochs, settings, workdir, progress=False).to_dict()


class RayExecutor(Executor):
    """Candidates as Ray tasks; results reach ``on_result`` in the driver as tasks finish.

    ``max_retries``: how often a task is re-run when its worker process dies (the rerun resumes
    from the candidate's last epoch checkpoint). ``max_in_flight``: cap on tasks submitted at
    once (default: all). Python exceptions inside a task are not retried: they come back as
    failed results (training already turns its own errors into failed results).
    """

    def __init__(self, settings: TrainSettings, run_dir: str, ray_address: Optional[str] = None,
                 num_cpus_per_candidate: float = 1, num_gpus_per_candidate: float = 0, max_retries: int = 2,
                 max_in_flight: Optional[int] = None, train_fn: Optional[TrainFn] = None,
                 ray_init_kwargs: Optional[Mapping[str, Any]] = None, progress: bool = True):
        try:
            import ray
        except ImportError:
            raise ExecutorError("executor 'ray': the ray package is not installed (pip install 'ray[default]')") \
                from None
        for name, v in (("num_cpus_per_candidate", num_cpus_per_candidate),
                        ("num_gpus_per_candidate", num_gpus_per_candidate)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ExecutorError(f"executor.{name}: {v!r} is not a number >= 0")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < -1:
            raise ExecutorError(f"executor.max_retries: {max_retries!r} is not an integer >= -1 (-1: forever)")
        self.settings = settings
        self.run_dir = os.path.abspath(run_dir)
        self.num_cpus = num_cpus_per_candidate
        self.num_gpus = num_gpus_per_candidate
        self.max_retries = max_retries
        self.max_in_flight = max_in_flight
        self.train_fn = train_fn or train_candidate
        self.progress = progress
        self._ray = ray
        self._owns_ray = False
        if not ray.is_initialized():
            kwargs = dict(ray_init_kwargs or {})
            kwargs.setdefault("log_to_driver", False)
            ray.init(address=ray_address, **kwargs)
            self._owns_ray = True
        elif ray_address not in (None, "auto"):
            log.info("ray is already initialised; ignoring ray_address=%r", ray_address)
        self.num_gpus, device = gpu_reservation(num_gpus_per_candidate, settings.device,
                                                ray.cluster_resources().get("GPU", 0))
        self.settings = settings.replace(device=device)
        self._remote = ray.remote(_ray_train)

    def run(self, candidates: Sequence[Candidate], epochs: int, on_result: Callable[[TrainResult], None]) -> None:
        from tqdm.auto import tqdm

        _check_batch(candidates, epochs)
        ray = self._ray
        todo = list(candidates)
        pending: Dict[Any, Candidate] = {}
        limit = self.max_in_flight or len(todo) or 1
        threads = max(1, int(self.num_cpus))
        opts = dict(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=self.max_retries,
                    retry_exceptions=False)
        bar = tqdm(total=len(todo), desc="candidates", unit="cand", disable=not self.progress, leave=False)
        try:
            while todo or pending:
                while todo and len(pending) < limit:
                    cand = todo.pop(0)
                    ref = self._remote.options(name=f"train:{cand.key}", **opts).remote(
                        self.train_fn, cand, epochs, self.settings, candidate_dir(self.run_dir, cand.key), threads)
                    pending[ref] = cand
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    cand = pending.pop(ref)
                    on_result(classify_failure(self._collect(ref, cand, epochs)))
                    bar.update(1)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            bar.close()

    def _collect(self, ref: Any, cand: Candidate, epochs: int) -> TrainResult:
        try:
            return TrainResult.from_dict(self._ray.get(ref))
        except Exception as e:  # noqa: BLE001 - retries exhausted, task error, lost node ...
            # a Python error inside the task arrives wrapped (RayTaskError): classify its cause
            cause = getattr(e, "cause", None) or e
            reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
            log.warning("candidate %s: ray task failed: %s: %s", cand.key, type(e).__name__, reason)
            return TrainResult(cand.key, "failed", error=f"ray task failed ({type(cause).__name__}): {reason}",
                               epochs_planned=epochs)

    def check_data(self, resolution: int) -> None:
        check_training_data(self.settings, resolution)

    def close(self) -> None:
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns_ray = False


# --------------------------------------------------------------------------------------------
# Registry


ExecutorFactory = Callable[..., Executor]
_EXECUTORS: Dict[str, ExecutorFactory] = {}
# kinds implemented elsewhere, imported on first use: kind -> "module:attribute"
_LAZY: Dict[str, str] = {"oracle": "fbnet_zoo.search.oracle:make_oracle_executor",
                         "table": "fbnet_zoo.search.tabular:make_table_executor"}
# what the search runner hands every factory besides the executor options; the built-in
# training kinds do not need it
_CONTEXT = ("space", "values_of", "search_config")


def register_executor(kind: str, factory: ExecutorFactory, overwrite: bool = False) -> None:
    """Make ``make_executor(kind, train, run_dir, **opts)`` call ``factory(train, run_dir, **opts)``."""
    if kind in _EXECUTORS and not overwrite:
        raise ExecutorError(f"executor kind {kind!r} is already registered")
    _EXECUTORS[kind] = factory


def executor_kinds() -> list:
    return sorted(set(_EXECUTORS) | set(_LAZY))


def _settings(train: Union[Mapping[str, Any], TrainSettings, None]) -> TrainSettings:
    try:
        return TrainSettings.from_dict(train)
    except TrainConfigError:
        raise
    except TypeError as e:
        raise TrainConfigError(f"train: {e}") from None


def _local_factory(train, run_dir: str, ray_address=None, num_cpus_per_candidate=1, num_gpus_per_candidate=0,
                   max_retries=2, **opts: Any) -> Executor:
    opts = {k: v for k, v in opts.items() if k not in _CONTEXT}
    return LocalExecutor(_settings(train), run_dir, **opts)


def _ray_factory(train, run_dir: str, ray_address=None, num_cpus_per_candidate=1, num_gpus_per_candidate=0,
                 max_retries=2, **opts: Any) -> Executor:
    opts = {k: v for k, v in opts.items() if k not in _CONTEXT}
    return RayExecutor(_settings(train), run_dir, ray_address=ray_address,
                       num_cpus_per_candidate=num_cpus_per_candidate,
                       num_gpus_per_candidate=num_gpus_per_candidate, max_retries=max_retries, **opts)


def _lazy_factory(target: str) -> ExecutorFactory:
    module_name, attr = target.split(":")

    def factory(train, run_dir: str, **opts: Any) -> Executor:
        import importlib

        cls = getattr(importlib.import_module(module_name), attr)
        params = inspect.signature(cls).parameters
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        opts = dict(opts, train=train, run_dir=run_dir)
        kwargs = {k: v for k, v in opts.items() if accepts_any or k in params}
        return cls(**kwargs)

    return factory


register_executor("local", _local_factory)
register_executor("ray", _ray_factory)


def make_executor(kind: str, train: Union[Mapping[str, Any], TrainSettings, None], run_dir: str,
                  ray_address: Optional[str] = None, num_cpus_per_candidate: float = 1,
                  num_gpus_per_candidate: float = 0, max_retries: int = 2, **opts: Any) -> Executor:
    """An executor of ``kind`` ("local", "ray", or a registered kind such as "oracle").

    ``train``: the search config's ``train:`` section (validated strictly) or a TrainSettings.
    ``opts`` go to the executor: ``progress``, ``train_fn`` (a replacement for
    ``train_candidate`` with the same signature), Ray's ``max_in_flight`` / ``ray_init_kwargs``;
    for "oracle", the OracleExecutor's own arguments (``space``, ``values_of``, ...); from the
    search runner, its context (``space``, ``values_of``, ``search_config``).
    """
    if kind not in _EXECUTORS and kind in _LAZY:
        _EXECUTORS[kind] = _lazy_factory(_LAZY[kind])
    if kind not in _EXECUTORS:
        raise ExecutorError(f"executor.kind: {kind!r} is not one of {executor_kinds()}")
    if run_dir is None:
        raise ExecutorError("run_dir: required (candidates checkpoint under <run_dir>/candidates/<key>)")
    return _EXECUTORS[kind](train, os.fspath(run_dir), ray_address=ray_address,
                            num_cpus_per_candidate=num_cpus_per_candidate,
                            num_gpus_per_candidate=num_gpus_per_candidate, max_retries=max_retries, **opts)
