"""Tabular "training": a candidate's final accuracy looked up in a benchmark table.

Sources:

- ``csv`` (default): a CSV with an ``arch`` column (the benchmark's arch strings) and one
  ``<dataset>_test_acc`` column per dataset; the packaged NAS-Bench-201 copy
  (``model_configs/benchmarks/nas_bench_201.csv``, see its ``.md`` note) when no path is given.
- ``nats_bench`` / ``nas_201_api``: the official benchmark files through the optional
  ``nats_bench`` / ``nas-bench-201`` packages (``pip install 'fbnet_zoo[nas-bench]'``):
  every architecture's ``get_more_info(..., is_random=False)["test-accuracy"]`` after the
  200-epoch schedule.

``TableExecutor`` is the search's ``table`` executor: each candidate is one look-up, stored
like a trained candidate (status ok, ``top1 = [final accuracy]``). There are no learning
curves in a table, so the runner skips early-stop calibration and says so in the report.
"""

from __future__ import annotations

import csv
import logging
import os
from typing import Any, Callable, List, Mapping, Optional, Sequence

import numpy as np

from fbnet_zoo.errors import SearchConfigError

from .candidate import Candidate, TrainResult
from .executors import Executor
from .spaces.nas_bench_201 import CellArchError, parse_arch

logger = logging.getLogger(__name__)

SOURCES = ("csv", "nats_bench", "nas_201_api")
COLUMN_SUFFIX = "_test_acc"


class TableError(SearchConfigError):
    """A missing or malformed benchmark table, or a dataset it does not hold."""


def packaged_table() -> str:
    import fbnet_zoo.model_configs as mc

    return os.path.join(os.path.dirname(os.path.abspath(mc.__file__)), "benchmarks", "nas_bench_201.csv")


def _read_header(path: str) -> List[str]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return next(csv.reader(f), [])
    except OSError as e:
        raise TableError(f"bench.table: {path!r} cannot be read ({e})") from None


def csv_datasets(path: Optional[str] = None) -> List[str]:
    """The datasets of a CSV table: every ``<dataset>_test_acc`` column, in file order."""
    header = _read_header(path or packaged_table())
    return [c[: -len(COLUMN_SUFFIX)] for c in header if c.endswith(COLUMN_SUFFIX) and len(c) > len(COLUMN_SUFFIX)]


class Table:
    """arch string -> final test accuracy (%) of one dataset, as arrays (``archs``, ``acc``)."""

    def __init__(self, archs: Sequence[str], acc: Sequence[float], dataset: str, source: str) -> None:
        self.archs = list(archs)
        self.acc = np.asarray(acc, dtype=np.float64)
        self.dataset = dataset
        self.source = source
        self.index = {a: i for i, a in enumerate(self.archs)}
        if len(self.index) != len(self.archs):
            raise TableError(f"{source}: repeated architectures in the table")

    def __len__(self) -> int:
        return len(self.archs)

    def __getitem__(self, arch: str) -> float:
        return float(self.acc[self.index[arch]])

    def __contains__(self, arch: object) -> bool:
        return arch in self.index

    @property
    def optimum(self) -> float:
        return float(self.acc.max())

    @classmethod
    def from_csv(cls, path: Optional[str], dataset: str) -> "Table":
        user_table = path is not None  # the packaged table's arch strings are known good
        path = path or packaged_table()
        column = f"{dataset}{COLUMN_SUFFIX}"
        header = _read_header(path)
        if "arch" not in header:
            raise TableError(f"bench.table: {path!r} has no 'arch' column (columns: {header})")
        if column not in header:
            raise TableError(f"bench.dataset: {dataset!r} is not in {path!r}; its datasets: {csv_datasets(path)}")
        archs, acc = [], []
        with open(path, newline="", encoding="utf-8") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                try:
                    value = float(row[column])
                except (TypeError, ValueError):
                    raise TableError(f"{path}:{line}: {column} = {row[column]!r} is not a number") from None
                if user_table:  # else every look-up of a cell misses, and the search fails a round later
                    try:
                        parse_arch(row["arch"])
                    except CellArchError as e:
                        raise TableError(f"{path}:{line}: {e}") from None
                archs.append(row["arch"])
                acc.append(value)
        if not archs:
            raise TableError(f"bench.table: {path!r} has no rows")
        return cls(archs, acc, dataset, f"csv:{path}")

    @classmethod
    def from_official(cls, path: Optional[str], dataset: str, source: str = "nats_bench") -> "Table":
        """Every architecture of the official benchmark file (or the packages' default location
        when ``path`` is None) after the 200-epoch schedule."""
        if source == "nats_bench":
            try:
                from nats_bench import create
            except ImportError:
                raise TableError("bench.source: 'nats_bench' needs the nats_bench package "
                                 "(pip install 'fbnet_zoo[nas-bench]')") from None
            api = create(path, "tss", fast_mode=True, verbose=False)

            def final(i: int) -> float:
                return api.get_more_info(i, dataset, hp="200", is_random=False)["test-accuracy"]
        elif source == "nas_201_api":
            try:
                from nas_201_api import NASBench201API
            except ImportError:
                raise TableError("bench.source: 'nas_201_api' needs the nas-bench-201 package "
                                 "(pip install 'fbnet_zoo[nas-bench]')") from None
            api = NASBench201API(path, verbose=False)

            def final(i: int) -> float:
                return api.get_more_info(i, dataset, None, use_12epochs_result=False, is_random=False)["test-accuracy"]
        else:
            raise TableError(f"bench.source: {source!r} is not one of {list(SOURCES)}")
        archs = [api.meta_archs[i] for i in range(len(api))]
        return cls(archs, [float(final(i)) for i in range(len(archs))], dataset, f"{source}:{path}")

    @classmethod
    def load(cls, table: Optional[str], dataset: str, source: str = "csv") -> "Table":
        if source == "csv":
            return cls.from_csv(table, dataset)
        return cls.from_official(table, dataset, source)


def make_table_executor(run_dir: Optional[str] = None, search_config: Any = None,
                        table: Optional[str] = None, dataset: Optional[str] = None, source: Optional[str] = None,
                        log_path: Optional[str] = None, **_context: Any) -> "TableExecutor":
    """The ``table`` executor kind: settings from the search config's ``bench:`` section
    (explicit arguments win); every look-up is logged to ``<run_dir>/table_queries.log``."""
    b = search_config.bench.to_dict() if search_config is not None else {}
    given = {"table": table, "dataset": dataset, "source": source}
    b.update({k: v for k, v in given.items() if v is not None})
    if "dataset" not in b:
        raise TableError("bench.dataset: missing (the table's dataset, e.g. cifar10)")
    if log_path is None and run_dir is not None and search_config is not None:
        log_path = os.path.join(run_dir, "table_queries.log")
    return TableExecutor.from_config(b, log_path)


class TableExecutor(Executor):
    """The ``table`` executor: each candidate's result is its table entry (one query each)."""

    learning_curves = False

    def __init__(self, table: Table, log_path: Optional[str] = None) -> None:
        self.table = table
        self.log_path = log_path
        self.queries = 0

    @classmethod
    def from_config(cls, bench: Mapping[str, Any], log_path: Optional[str] = None) -> "TableExecutor":
        return cls(Table.load(bench.get("table"), bench["dataset"], bench.get("source", "csv")), log_path)

    def run(self, candidates: Sequence[Candidate], epochs: int, on_result: Callable[[TrainResult], None]) -> None:
        for cand in candidates:
            self.queries += 1
            if self.log_path:  # one line per look-up, across processes (the resume test counts them)
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(cand.key + "\n")
            if not isinstance(cand.arch, str) or cand.arch not in self.table:
                on_result(TrainResult(cand.key, "failed", error=f"arch {cand.arch!r} is not in the table "
                                      f"({self.table.source})", epochs_planned=epochs))
                continue
            on_result(TrainResult(cand.key, "ok", top1=[self.table[cand.arch]], epoch_seconds=[0.0],
                                  epochs_planned=epochs,
                                  extra={"table": self.table.source, "dataset": self.table.dataset}))

    def check_data(self, resolution: int) -> None:
        """Nothing to read: the table was loaded (and checked) when the executor was built."""
