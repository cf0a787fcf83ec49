"""Stage 1's pool: scrambled Sobol points of the space, decoded, labelled with FLOPs and
params by the zoo's analytic counter, filtered by the pool's resource window."""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from fbnet_zoo.blocks import Classifier, Cx, block_complexity, pool_cx
from fbnet_zoo.complexity import complexity
from fbnet_zoo.spec import walk_rows

from .config import SearchConfigError
from .space import SearchSpace

logger = logging.getLogger(__name__)


@dataclass
class Pool:
    """n accepted candidates, in Sobol order (a prefix is itself well spread)."""

    units: np.ndarray                  # (n, ndim) canonical unit points
    keys: List[str]
    flops: np.ndarray                  # (n,)
    params: np.ndarray                 # (n,)
    drawn: int = 0                     # Sobol points examined to fill the pool
    seed: int = 0
    values: List[Dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)


def sobol_points(ndim: int, n: int, seed: int, skip: int = 0) -> np.ndarray:
    """Points [skip, skip + n) of the scrambled Sobol sequence for ``seed``."""
    from scipy.stats import qmc

    sampler = qmc.Sobol(d=ndim, scramble=True, seed=np.random.default_rng(seed))
    if skip:
        sampler.fast_forward(skip)
    with warnings.catch_warnings():  # n need not be a power of 2 for our use
        warnings.simplefilter("ignore")
        return sampler.random(n)


class RowCostCache:
    """The zoo's analytic counter (fbnet_zoo.blocks cost twins, as fbnet_zoo.complexity walks
    them), memoised per (row, input shape): rows recur across a pool, so labelling 20K
    candidates costs a dict lookup per row instead of a walk per block. Equal to
    ``fbnet_zoo.count_flops`` / ``count_params`` exactly (tests pin it)."""

    def __init__(self, max_entries: int = 500_000) -> None:
        self._rows: Dict[tuple, tuple] = {}
        self.max_entries = max_entries

    def cost(self, arch, num_classes: int) -> tuple:
        h = w = arch.input_size
        c = arch.in_channels
        flops = params = 0
        div = arch.width_divisor
        for stage in arch.stages:
            for row in stage:
                key = (row, h, w, c, div)
                hit = self._rows.get(key)
                if hit is None:
                    cx = Cx(h, w, c)
                    for block in walk_rows((row,), c, div):
                        block_complexity(cx, block)
                    if cx.h < 1 or cx.w < 1:  # let the zoo's counter raise its own error
                        complexity(arch, None, num_classes)
                    hit = (cx.flops, cx.params, cx.h, cx.w, cx.c)
                    if len(self._rows) < self.max_entries:
                        self._rows[key] = hit
                flops += hit[0]
                params += hit[1]
                h, w, c = hit[2], hit[3], hit[4]
        cx = Cx(h, w, c)
        if num_classes > 0:
            Classifier.complexity(cx, num_classes)
        else:  # the headless forward pools, as fbnet_zoo.complexity counts it
            pool_cx(cx)
        flops += cx.flops
        params += cx.params
        return float(flops), float(params)


def label(space: SearchSpace, values: Mapping[str, Any], cache: Optional[RowCostCache] = None) -> tuple:
    """(FLOPs, params) of a decoded candidate."""
    arch = space.build_arch(values)
    if cache is not None:
        return cache.cost(arch, space.num_classes)
    cx = complexity(arch, None, space.num_classes)
    return float(cx.flops), float(cx.params)


def in_window(flops: float, params: float, window: Mapping[str, Optional[float]]) -> bool:
    lo, hi = window.get("flops_min"), window.get("flops_max")
    plo, phi = window.get("params_min"), window.get("params_max")
    return ((lo is None or flops >= lo) and (hi is None or flops <= hi)
            and (plo is None or params >= plo) and (phi is None or params <= phi))


def build_pool(space: SearchSpace, n: int, seed: int, window: Mapping[str, Optional[float]],
               max_draw_factor: int = 20, progress: bool = False) -> Pool:
    """Draw Sobol points in chunks until ``n`` unique candidates fall in ``window``."""
    units, keys, flops, params, vals = [], [], [], [], []
    seen = set()
    drawn = 0
    limit = n * max_draw_factor
    chunk = max(256, 1 << math.ceil(math.log2(max(n, 1))))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="stage 1: pool", unit="cand", leave=False)
    from scipy.stats import qmc

    sampler = qmc.Sobol(d=space.ndim, scramble=True, seed=np.random.default_rng(seed))
    cache = RowCostCache()
    try:
        while len(keys) < n and drawn < limit:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pts = sampler.random(min(chunk, limit - drawn))
            batch, canon = space.decode_batch(pts)
            for v, u in zip(batch, canon):
                drawn += 1
                k = space.key(v)
                if k in seen:
                    continue
                seen.add(k)
                f, p = label(space, v, cache)
                if not in_window(f, p, window):
                    continue
                units.append(u)
                keys.append(k)
                flops.append(f)
                params.append(p)
                vals.append(v)
                if bar is not None:
                    bar.update(1)
                if len(keys) >= n:
                    break
    finally:
        if bar is not None:
            bar.close()
    if not keys:
        raise SearchConfigError(f"pool: no candidate of {drawn} drawn falls in the window {dict(window)}; "
                                "widen pool.flops_min/flops_max")
    if len(keys) < n:
        logger.warning("pool: only %d unique candidates in the window after %d draws (asked %d)", len(keys), drawn, n)
    return Pool(np.array(units), keys, np.array(flops), np.array(params), drawn, seed, vals)
