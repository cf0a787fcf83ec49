"""Search methods on a tabular benchmark, counted alike: NARS and the standard baselines.

Every method sees the benchmark only through ``QueryLog``: a query returns an architecture's
table accuracy and costs one unit of the budget; an architecture queried before costs
nothing and is not counted twice (for every method alike). A method's result after B queries
is the best accuracy among the architectures it queried within its first B queries.

Architectures are ids 0..N-1 of the space's ``TabularSpace`` (every cell enumerated once,
with its canonical unit point, predictor features and FLOPs / params from the space), so
methods work on integer arrays rather than strings.

- ``random_search``: uniform draws over the space.
- ``regularized_evolution`` (Real et al., 2019, "aging evolution"): a population of P
  random architectures; each step samples S of the population uniformly, mutates the best of
  the sample (one edge changes to another operation), queries the child, adds it and removes
  the oldest member.
- ``nars``: the FBNetV3 search's three stages with the search's own pool (scrambled Sobol
  prefix), predictor (optional pretraining on FLOPs / params, per-round refits), round
  selection (round 1: the pool's first m; later rounds: the top m predicted among the
  unqueried pool, of which ``local_fraction`` instead come from the one-edge neighbours of
  the best measured archs, as ``stage2.local_fraction`` in the search) and stage-3 adaptive
  GA under each constraint; the GA's winners are the method's last queries (each one a
  query; ``winners`` = n: its n best-predicted unmeasured cells, so that a winner already
  measured does not leave a query unspent), so stage 3 must earn its place in the budget.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .config import PredictorConfig, Stage3Config
from .evolution import AdaptiveGA
from .predictor import Predictor, rank_corr
from .spaces import Space


class TabularSpace:
    """Every architecture of a finite, all-choice space, enumerated once, with its table accuracy.

    ``index[k]`` is id k's choice index per coordinate; ids are mixed-radix numbers of those
    indices (the last coordinate fastest)."""

    def __init__(self, space: Space, key_of: Any, accuracy: Mapping[str, float]) -> None:
        if not all(d.kind == "choice" for d in space.dims) or len(space.dims) != space.ndim:
            raise ValueError("TabularSpace needs a space of untied choice dimensions")
        self.space = space
        self.radix = np.array([len(d.choices) for d in space.dims], dtype=np.int64)
        n = int(np.prod(self.radix))
        ids = np.arange(n, dtype=np.int64)
        index = np.zeros((n, len(self.radix)), dtype=np.int64)
        rem = ids.copy()
        for c in range(len(self.radix) - 1, -1, -1):
            index[:, c] = rem % self.radix[c]
            rem //= self.radix[c]
        self.index = index
        self.units = (index + 0.5) / self.radix
        self.features = space.encode_units(self.units)
        self.values = [dict(zip([d.name for d in space.dims], (d.choices[i] for d, i in zip(space.dims, row))))
                       for row in index.tolist()]
        self.names = [key_of(v) for v in self.values]
        cost = np.array([space.cost(v) for v in self.values])
        self.flops, self.params = cost[:, 0], cost[:, 1]
        missing = [a for a in self.names if a not in accuracy]
        if missing:
            raise ValueError(f"{len(missing)} architectures of the space are not in the table, e.g. {missing[0]!r}")
        self.acc = np.array([accuracy[a] for a in self.names], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.acc)

    def id_of_index(self, index: np.ndarray) -> np.ndarray:
        """Mixed-radix id of (N, ndim) choice indices."""
        out = np.zeros(len(index), dtype=np.int64)
        for c in range(index.shape[1]):
            out = out * self.radix[c] + index[:, c]
        return out

    def id_of_units(self, units: np.ndarray) -> np.ndarray:
        u = np.clip(np.atleast_2d(units), 0.0, 1.0)
        return self.id_of_index(np.minimum((u * self.radix).astype(np.int64), self.radix - 1))

    @property
    def optimum(self) -> float:
        return float(self.acc.max())


class QueryLog:
    """Counted queries under a budget: ``trace[i]`` is the accuracy of the (i+1)-th new arch."""

    def __init__(self, table: TabularSpace, budget: int) -> None:
        self.table = table
        self.budget = int(budget)
        self.seen: Dict[int, float] = {}
        self.order: List[int] = []

    @property
    def used(self) -> int:
        return len(self.order)

    @property
    def left(self) -> int:
        return self.budget - self.used

    def query(self, arch: int) -> Optional[float]:
        """The accuracy of ``arch``; None (and nothing counted) once the budget is spent on new archs."""
        arch = int(arch)
        if arch in self.seen:
            return self.seen[arch]
        if self.used >= self.budget:
            return None
        acc = float(self.table.acc[arch])
        self.seen[arch] = acc
        self.order.append(arch)
        return acc

    def trace(self) -> np.ndarray:
        return self.table.acc[np.array(self.order, dtype=np.int64)] if self.order else np.zeros(0)

    def best_so_far(self) -> np.ndarray:
        """best_so_far()[b - 1] = the result after b queries (b <= used)."""
        return np.maximum.accumulate(self.trace()) if self.order else np.zeros(0)


def best_after(best_so_far: np.ndarray, budget: int) -> float:
    """The result after ``budget`` queries (the last value if the method stopped earlier)."""
    if len(best_so_far) == 0:
        return float("nan")
    return float(best_so_far[min(budget, len(best_so_far)) - 1])


# ---------------------------------------------------------------------------- baselines
def random_search(table: TabularSpace, budget: int, seed: int) -> QueryLog:
    rng = np.random.default_rng(seed)
    log = QueryLog(table, budget)
    for _ in range(budget * 50):  # repeats are free; the cap only bounds a pathological loop
        if log.left <= 0:
            break
        log.query(int(rng.integers(len(table))))
    return log


def mutate_one_edge(table: TabularSpace, arch: int, rng: np.random.Generator) -> int:
    idx = table.index[arch].copy()
    c = int(rng.integers(len(idx)))
    idx[c] = (idx[c] + int(rng.integers(1, table.radix[c]))) % table.radix[c]
    return int(table.id_of_index(idx[None])[0])


def regularized_evolution(table: TabularSpace, budget: int, seed: int, population: int = 20,
                          sample: int = 5) -> QueryLog:
    """Real et al. (2019): population ``population``, tournament of ``sample``, one-edge mutation."""
    rng = np.random.default_rng(seed)
    log = QueryLog(table, budget)
    pop: List[int] = []
    for _ in range(budget * 50):
        if len(pop) >= population or log.left <= 0:
            break
        a = int(rng.integers(len(table)))
        if log.query(a) is not None:
            pop.append(a)
    for _ in range(budget * 50):
        if log.left <= 0:
            break
        contenders = [pop[i] for i in rng.choice(len(pop), size=min(sample, len(pop)), replace=False)]
        parent = max(contenders, key=lambda a: log.seen[a])
        child = mutate_one_edge(table, parent, rng)
        if log.query(child) is None:
            break
        pop.append(child)
        pop.pop(0)
    return log


# ---------------------------------------------------------------------------- NARS
@dataclass
class NARSSettings:
    """The search's stages on a table. ``m`` candidates per round; rounds fill the budget left
    after ``len(constraints)`` stage-3 winners. ``predictor``: Predictor settings (refit
    schedule, sizes); ``stage3``: AdaptiveGA settings."""

    pretrain: bool = True
    pool_n: int = 15625
    m: int = 10
    predictor: Dict[str, Any] = field(default_factory=dict)
    stage3: Dict[str, Any] = field(default_factory=dict)
    constraints: Sequence[Mapping[str, float]] = ({},)   # {}: unconstrained
    spearman_at: Sequence[int] = ()                      # label counts to measure Spearman at
    local_fraction: float = 0.0   # share of each later round taken from neighbours of the best measured
    local_parents: int = 5        # how many of the best measured archs lend their one-edge neighbours
    winners: Optional[int] = None  # stage-3 queries per constraint; None: the GA's best (a repeat costs
                                   # nothing); n: the GA population's n best-predicted unmeasured cells

    @property
    def predictor_config(self) -> PredictorConfig:
        """``predictor`` over this baseline's defaults, as the search config's section."""
        return PredictorConfig.from_mapping({"hidden": [64, 64], "head_hidden": 32, **self.predictor})

    @property
    def stage3_config(self) -> Stage3Config:
        """``stage3`` over this baseline's defaults, as the search config's section."""
        return Stage3Config.from_mapping({"population": 32, "top_k": 16, "max_generations": 30, "patience": 5,
                                          "seeds": 8, **self.stage3})


@dataclass
class NARSResult:
    logs: Dict[int, QueryLog]       # budget -> that budget's queries (stage 2, then stage-3 winners)
    spearman: Dict[int, float]      # labels -> Spearman of the predictor on every unqueried arch
    winners: Dict[int, List[int]]   # budget -> stage-3 winners


def sobol_pool(table: TabularSpace, n: int, seed: int, max_draws: int = 1 << 22) -> np.ndarray:
    """The first ``n`` distinct ids of the scrambled Sobol sequence for ``seed`` (the search's
    pool order; ``build_pool`` with no resource window draws the same candidates)."""
    from scipy.stats import qmc

    sampler = qmc.Sobol(d=table.space.ndim, scramble=True, seed=np.random.default_rng(seed))
    n = min(n, len(table))
    ids = np.zeros(0, dtype=np.int64)
    draw = 1 << max(8, math.ceil(math.log2(max(n, 2))))
    while len(ids) < max_draws:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ids = np.concatenate([ids, table.id_of_units(sampler.random(draw))])
        _, first = np.unique(ids, return_index=True)
        if len(first) >= n:
            break
        draw = len(ids)  # double: covering a whole finite space takes ~n log n draws
    return ids[np.sort(first)][:n]


def pretrained_predictor(table: TabularSpace, pool: np.ndarray, settings: NARSSettings, seed: int) -> Predictor:
    """Stage 1: a predictor (pretrained on the pool's FLOPs / params when settings.pretrain)."""
    pred = Predictor.from_config(table.features.shape[1], settings.predictor_config, seed)
    if settings.pretrain:
        pred.pretrain(table.features[pool], table.flops[pool], table.params[pool], seed=seed + 11)
    return pred


def _refit(base: bytes, table: TabularSpace, labels: Sequence[int], settings: NARSSettings, seed: int) -> Predictor:
    pred = Predictor.from_bytes(base, settings.predictor_config)  # each refit starts from stage 1's predictor
    done = np.asarray(labels, dtype=np.int64)
    pred.refit(table.features[done], table.acc[done], seed=seed)
    return pred


def neighbours(table: TabularSpace, ids: Sequence[int]) -> np.ndarray:
    """Every architecture one coordinate away from one of ``ids`` (regularized evolution's
    mutation, enumerated), in order of ``ids``, without duplicates."""
    out = []
    for a in ids:
        idx = table.index[int(a)]
        for c in range(len(idx)):
            for shift in range(1, int(table.radix[c])):
                n = idx.copy()
                n[c] = (n[c] + shift) % table.radix[c]
                out.append(n)
    if not out:
        return np.zeros(0, dtype=np.int64)
    ids_ = table.id_of_index(np.array(out))
    _, first = np.unique(ids_, return_index=True)
    return ids_[np.sort(first)]


def _stage3(table: TabularSpace, pred: Predictor, labels: Sequence[int], pool: np.ndarray, budget: int,
            settings: NARSSettings, seed: int) -> tuple:
    """Stage 3 after the stage-2 ``labels``: one GA per constraint; its winner is queried."""
    log = QueryLog(table, budget)
    for a in labels:
        log.query(a)
    s3 = settings.stage3_config
    ga = AdaptiveGA(table.space, pred, None, s3)
    measured = sorted(log.order, key=lambda a: -log.seen[a])
    by_score = pool[np.argsort(-pred.predict(table.features[pool]), kind="stable")]
    winners = []
    for ci, c in enumerate(settings.constraints):
        fits = (table.flops <= c.get("flops", np.inf)) & (table.params <= c.get("params", np.inf))
        seeds = [table.units[a] for a in measured if fits[a]][: s3.seeds]
        seeds += [table.units[a] for a in by_score if fits[a]][: max(0, s3.seeds - len(seeds))]
        res = ga.run(dict(c), seeds, seed=seed * 7 + ci)
        if settings.winners is None:
            picks = [int(table.id_of_units(res.best.unit[None])[0])]
        else:  # the population is sorted by predicted score, best first
            ranked = table.id_of_units(np.stack([i.unit for i in res.population]))
            picks = [int(a) for a in dict.fromkeys(ranked.tolist()) if int(a) not in log.seen][: settings.winners]
        for winner in picks:
            winners.append(winner)
            log.query(winner)
    return log, winners


def _select(table: TabularSpace, pred: Predictor, fresh: np.ndarray, log: QueryLog, take: int,
            settings: NARSSettings) -> np.ndarray:
    """A later round's candidates: the ``local_fraction`` share the best-predicted unmeasured
    one-edge neighbours of the ``local_parents`` best measured archs that have any left
    (exploitation around what was measured, as stage 3 evolves from the best), the rest the
    best-predicted unmeasured archs of the pool."""
    n_local = int(round(settings.local_fraction * take))
    chosen = np.zeros(0, dtype=np.int64)
    if n_local:
        near: List[int] = []
        moves: List[tuple] = []   # (parent, coordinate changed) of each entry of near
        for a in sorted(log.order, key=lambda a: -log.seen[a]):  # a parent with nothing left to try is skipped
            n_before = len(near)
            for b in neighbours(table, [a]):
                if int(b) not in log.seen and int(b) not in near:
                    near.append(int(b))
                    moves.append((a, int(np.flatnonzero(table.index[b] != table.index[a])[0])))
            if len(near) > n_before and len({p for p, _ in moves}) == settings.local_parents:
                break
        if near:
            score = pred.predict(table.features[np.array(near, dtype=np.int64)])
            # the least-tried (parent, edge) first, the predictor's favourite among them: a
            # predictor that under-rates one edge's operations (seen: skip_connect into the
            # output node) cannot keep that edge of the best cells from being tried
            tried = {m: 0 for m in moves}
            for a in log.order:
                for pa in {p for p, _ in moves}:
                    diff = np.flatnonzero(table.index[a] != table.index[pa])
                    if len(diff) == 1 and (pa, int(diff[0])) in tried:
                        tried[(pa, int(diff[0]))] += 1
            left = list(np.argsort(-score, kind="stable"))
            picks = []
            while left and len(picks) < n_local:
                i = min(left, key=lambda i: tried[moves[i]])   # stable: the best score among the least tried
                left.remove(i)
                tried[moves[i]] += 1
                picks.append(near[i])
            chosen = np.array(picks, dtype=np.int64)
    rest = fresh[~np.isin(fresh, chosen)]
    top = rest[np.argsort(-pred.predict(table.features[rest]), kind="stable")[: take - len(chosen)]]
    return np.concatenate([chosen, top])


def nars(table: TabularSpace, budgets: Sequence[int], seed: int, settings: NARSSettings,
         stage1: Optional[bytes] = None, pool: Optional[np.ndarray] = None) -> NARSResult:
    """NARS under each of ``budgets`` queries, as separate runs would give them.

    A run with budget B spends B - len(constraints) queries in stage-2 rounds of ``m`` (the last
    one cut short) and the rest on its stage-3 winners. Runs for several budgets share their
    common prefix: up to the round where a smaller budget's stage 2 ends, its run selects,
    labels and refits exactly as the largest run does (same rankings, same seeds), so one pass
    computes them all. ``stage1`` / ``pool``: a cached stage-1 predictor (bytes) and pool."""
    budgets = sorted({int(b) for b in budgets})
    if pool is None:
        pool = sobol_pool(table, settings.pool_n, seed * 7919 + 1)
    base = stage1 if stage1 is not None else pretrained_predictor(table, pool, settings, seed).to_bytes()
    per = 1 if settings.winners is None else settings.winners
    stage2_len = {b: max(b - per * len(settings.constraints), 1) for b in budgets}
    main = QueryLog(table, max(stage2_len.values()))
    pred = Predictor.from_bytes(base, settings.predictor_config)
    logs: Dict[int, QueryLog] = {}
    winners: Dict[int, List[int]] = {}
    spearman: Dict[int, float] = {}

    def finish(b: int, p: Predictor, labels: Sequence[int]) -> None:
        logs[b], winners[b] = _stage3(table, p, labels, pool, b, settings, seed)

    rnd = 0
    while main.left > 0:
        rnd += 1
        queried = np.zeros(len(table), dtype=bool)
        queried[np.array(main.order, dtype=np.int64)] = True
        fresh = pool[~queried[pool]]
        if not len(fresh):
            break
        take = min(settings.m, main.left)
        if rnd == 1:
            chosen = fresh[:take]
        else:
            # a round cut short keeps the first ``take`` of its m (so budgets share their prefix)
            chosen = _select(table, pred, fresh, main, settings.m, settings)[:take]
        before = main.used
        for b, n in stage2_len.items():  # a smaller budget whose stage 2 ends inside this round
            if before < n < before + len(chosen):
                labels = main.order + [int(a) for a in chosen[: n - before]]
                finish(b, _refit(base, table, labels, settings, seed * 1000 + rnd), labels)
        for a in chosen:
            main.query(int(a))
        pred = _refit(base, table, main.order, settings, seed * 1000 + rnd)
        if main.used in settings.spearman_at:
            mask = np.ones(len(table), dtype=bool)
            mask[np.array(main.order, dtype=np.int64)] = False
            spearman[main.used] = rank_corr(pred.predict(table.features[mask]), table.acc[mask], "spearman")
        for b, n in stage2_len.items():
            if n == main.used:
                finish(b, pred, list(main.order))
    for b in budgets:  # the pool ran out first
        if b not in logs:
            finish(b, pred, list(main.order))
    return NARSResult(logs, spearman, winners)


__all__ = ["NARSResult", "NARSSettings", "QueryLog", "TabularSpace", "best_after", "mutate_one_edge",
           "nars", "neighbours", "pretrained_predictor", "random_search", "regularized_evolution", "sobol_pool"]
