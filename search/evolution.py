"""Stage 3: predictor-based adaptive genetic algorithm under one resource constraint.

Srinivas & Patnaik (1994) adaptive rates: with f_max / f_avg the population's best / mean
predicted score, a pair whose better parent scores f' crosses over with probability
``k1 (f_max - f') / (f_max - f_avg)`` if f' >= f_avg else ``k3``; a child of score-class f
mutates each coordinate with probability ``k2 (f_max - f) / (f_max - f_avg)`` if f >= f_avg
else ``k4``. Good solutions are protected, poor ones are disrupted. Individuals are
canonical unit points of the space, mutated and crossed over by the space
(``Space.mutate`` / ``Space.crossover``); only children that satisfy the constraint are kept
(each slot retries up to ``max_tries``); survivors are the top K of parents + children; the
run stops once the best score has gained less than ``tol`` for ``patience`` generations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .config import SearchConfigError, Stage3Config
from .encoding import Encoder
from .predictor import Predictor
from .spaces import Space

logger = logging.getLogger(__name__)


def satisfies(flops: float, params: float, constraint: Mapping[str, float]) -> bool:
    return flops <= constraint.get("flops", float("inf")) and params <= constraint.get("params", float("inf"))


@dataclass
class Individual:
    unit: np.ndarray
    values: Dict[str, Any]
    key: str
    flops: float
    params: float
    score: float = float("nan")


@dataclass
class EvolutionResult:
    best: Individual
    population: List[Individual]
    history: List[float] = field(default_factory=list)   # best score per generation
    generations: int = 0
    evaluated: int = 0
    rejected: int = 0


class AdaptiveGA:
    def __init__(self, space: Space, predictor: Predictor, encoder: Optional[Encoder] = None,
                 settings: Optional[Stage3Config] = None) -> None:
        self.space = space
        self.predictor = predictor
        self.encoder = encoder or Encoder(space)
        self.s = settings or Stage3Config()  # the mutation itself is the space's

    def _make(self, unit: np.ndarray) -> Individual:
        values = self.space.decode(unit)
        canon = self.space.unit_of(values)
        f, p = self.space.cost(values)
        return Individual(canon, values, self.space.key(values), f, p)

    def _score(self, inds: Sequence[Individual]) -> None:
        if not inds:
            return
        x = self.encoder.encode_units(np.stack([i.unit for i in inds]))
        for ind, s in zip(inds, self.predictor.predict(x)):
            ind.score = float(s)

    def run(self, constraint: Mapping[str, float], seeds: Sequence[np.ndarray], seed: int = 0,
            progress: bool = False, desc: str = "stage 3") -> EvolutionResult:
        s = self.s
        rng = np.random.default_rng(seed)
        K, P = s.top_k, s.population
        pop: Dict[str, Individual] = {}
        rejected = 0
        for u in seeds:
            ind = self._make(np.asarray(u, dtype=float))
            if satisfies(ind.flops, ind.params, constraint):
                pop.setdefault(ind.key, ind)
            else:
                rejected += 1
        tries = 0
        while len(pop) < K and tries < K * s.max_tries:  # fill: mutants of seeds, else random points
            tries += 1
            if pop and rng.random() < 0.7:
                parent = list(pop.values())[rng.integers(len(pop))]
                u = self.space.mutate(parent.unit, 0.3, rng)
            else:
                u = rng.random(self.space.ndim)
            ind = self._make(u)
            if satisfies(ind.flops, ind.params, constraint):
                pop.setdefault(ind.key, ind)
            else:
                rejected += 1
        if not pop:
            raise SearchConfigError(f"stage3 constraint {dict(constraint)}: no candidate found that meets it "
                                    f"after {tries} tries")
        population = list(pop.values())
        self._score(population)
        population.sort(key=lambda i: -i.score)
        population = population[:K]
        seen = {i.key for i in population}
        history = [population[0].score]
        evaluated = len(population)
        stale = 0
        gens = 0
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=s.max_generations, desc=desc, unit="gen", leave=False)
        for gens in range(1, s.max_generations + 1):
            scores = np.array([i.score for i in population])
            fmax, favg = float(scores.max()), float(scores.mean())
            spread = max(fmax - favg, 1e-12)
            children: List[Individual] = []
            for _ in range(P):
                for _attempt in range(s.max_tries):
                    a, b = (population[j] for j in rng.integers(len(population), size=2))
                    a2, b2 = (population[j] for j in rng.integers(len(population), size=2))
                    pa = a if a.score >= a2.score else a2          # binary tournaments
                    pb = b if b.score >= b2.score else b2
                    fprime = max(pa.score, pb.score)
                    pc = s.k1 * (fmax - fprime) / spread if fprime >= favg else s.k3
                    if rng.random() < min(pc, 1.0):
                        u = self.space.crossover(pa.unit, pb.unit, rng)
                    else:
                        u = (pa if pa.score >= pb.score else pb).unit
                    pm = s.k2 * (fmax - fprime) / spread if fprime >= favg else s.k4
                    u = self.space.mutate(u, min(max(pm, 0.0), 1.0), rng)
                    ind = self._make(u)
                    if ind.key in seen:
                        continue
                    if not satisfies(ind.flops, ind.params, constraint):
                        rejected += 1
                        continue
                    seen.add(ind.key)
                    children.append(ind)
                    break
            self._score(children)
            evaluated += len(children)
            population = sorted(population + children, key=lambda i: -i.score)[:K]
            best = population[0].score
            gain = best - history[-1]
            history.append(best)
            stale = stale + 1 if gain < s.tol else 0
            if bar is not None:
                bar.update(1)
                bar.set_postfix(best=f"{best:.3f}")
            if stale >= s.patience:
                break
        if bar is not None:
            bar.close()
        return EvolutionResult(population[0], population, history, gens, evaluated, rejected)
