"""A synthetic trainer: a fixed random function of the candidate, with learning curves.

``OracleExecutor`` implements the executor interface (``run(candidates, epochs, on_result)``,
``close()``) without training anything: a candidate's final top-1 is a fixed function of
its encoding (a random MLP plus a smooth size term, drawn once from ``seed``), and its
per-epoch curve rises to that value at a candidate-specific speed with noise that fades
by the last epoch, so early epochs rank candidates imperfectly. Tests and benchmarks use it
as a cheap stand-in with a known answer; ``tools/search.py --executor oracle`` selects it.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from fbnet_zoo.complexity import complexity

from .candidate import Candidate, TrainResult
from .encoding import Encoder
from .executors import Executor
from .space import SearchSpace


class Oracle:
    """final_top1(values) and curve(key, values, epochs, total_epochs) for one space."""

    def __init__(self, space: SearchSpace, seed: int = 0, hidden: int = 32, noise: float = 0.6) -> None:
        self.space = space
        self.encoder = Encoder(space)
        g = np.random.default_rng(seed)
        f = self.encoder.width
        self.w1 = g.normal(0, 1.0 / math.sqrt(max(f, 1)), (f, hidden)) * 2.0
        self.b1 = g.normal(0, 0.5, hidden)
        self.w2 = g.normal(0, 1.0 / math.sqrt(hidden), hidden)
        self.target = g.random(f)                      # a preferred point in feature space
        self.noise = noise
        self.seed = seed
        # size term: log FLOPs normalised over the space's range
        lo = space.min_resources()["flops"]
        hi_arch = space.build_arch(space.decode(space.extreme_point(True)))
        hi = complexity(hi_arch, None, space.num_classes).flops
        self.log_lo, self.log_hi = math.log(lo), math.log(max(hi, lo * 1.0001))

    def score_features(self, x: np.ndarray, flops: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(x)
        h = np.tanh(x @ self.w1 + self.b1)
        rugged = np.tanh(h @ self.w2)
        near = -((x - self.target) ** 2).mean(1)
        size = (np.log(np.asarray(flops, dtype=float)) - self.log_lo) / (self.log_hi - self.log_lo)
        return 55.0 + 12.0 * size + 6.0 * rugged + 30.0 * near

    def final_top1(self, values) -> float:
        arch = self.space.build_arch(values)
        flops = complexity(arch, None, self.space.num_classes).flops
        return float(self.score_features(self.encoder.encode_values(values)[None], np.array([flops]))[0])

    def curve(self, key: str, final: float, epochs: int, total: int) -> list:
        h = int(hashlib.sha1(f"{self.seed}:{key}".encode()).hexdigest()[:8], 16)
        g = np.random.default_rng(h)
        rate = g.uniform(0.6, 2.5) * 3.0 / max(total, 1)
        denom = 1.0 - math.exp(-rate * total)
        out = []
        for e in range(1, epochs + 1):
            base = final * (1.0 - math.exp(-rate * e)) / denom
            fade = (total - e) / max(total, 1)
            out.append(float(base + g.normal(0.0, self.noise) * fade))
        return out


class OracleExecutor(Executor):
    """Executor over an ``Oracle``: candidates 'train' instantly (plus ``delay_s`` each)."""

    def __init__(self, space: SearchSpace, seed: int = 0, hidden: int = 32, noise: float = 0.6,
                 delay_s: float = 0.0, values_of: Optional[Callable[[Candidate], dict]] = None,
                 log_path: Optional[str] = None) -> None:
        self.oracle = Oracle(space, seed, hidden, noise)
        self.delay_s = delay_s
        self.log_path = log_path
        self.values_of = values_of
        self.trained: Dict[str, int] = {}

    def _values(self, cand: Candidate) -> dict:
        if self.values_of is not None:
            return self.values_of(cand)
        raise ValueError("OracleExecutor needs values_of(candidate) -> the candidate's decoded values")

    def run(self, candidates: Sequence[Candidate], epochs: int, on_result: Callable[[TrainResult], None]) -> None:
        for cand in candidates:
            t0 = time.perf_counter()
            if self.delay_s:
                time.sleep(self.delay_s)
            final = self.oracle.final_top1(self._values(cand))
            top1 = self.oracle.curve(cand.key, final, epochs, cand.recipe.epochs)
            dt = time.perf_counter() - t0
            self.trained[cand.key] = self.trained.get(cand.key, 0) + 1
            if self.log_path:  # one line per training, across processes (the resume test counts them)
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(cand.key + "\n")
            on_result(TrainResult(cand.key, "ok", top1=top1, loss=[max(0.0, 4.0 - a / 25.0) for a in top1],
                                  epoch_seconds=[dt / max(epochs, 1)] * epochs, epochs_planned=epochs,
                                  extra={"oracle_final": final}))

    def close(self) -> None:
        pass


def make_oracle_executor(space: SearchSpace, values_of: Optional[Callable[[Candidate], dict]] = None,
                         run_dir: Optional[str] = None, search_config: Any = None,
                         seed: Optional[int] = None, hidden: Optional[int] = None, noise: Optional[float] = None,
                         delay_s: Optional[float] = None, log_path: Optional[str] = None,
                         **_context: Any) -> OracleExecutor:
    """The ``oracle`` executor kind: settings from the search config's ``oracle:`` section
    (explicit arguments win); every training is logged to ``<run_dir>/oracle_trained.log``."""
    o = search_config.oracle.to_dict() if search_config is not None else {}
    given = {"seed": seed, "hidden": hidden, "noise": noise, "delay_s": delay_s}
    o.update({k: v for k, v in given.items() if v is not None})
    if log_path is None and run_dir is not None and search_config is not None:
        log_path = os.path.join(run_dir, "oracle_trained.log")
    return OracleExecutor(space, values_of=values_of, log_path=log_path, **o)
