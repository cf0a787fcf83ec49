"""Stage 1's pool: scrambled Sobol points of the space, decoded, labelled with FLOPs and
params by the space's analytic counter, filtered by the pool's resource window."""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from .config import PoolConfig, SearchConfigError
from .spaces import RowCostCache, Space

logger = logging.getLogger(__name__)

__all__ = ["Pool", "RowCostCache", "build_pool", "label", "sobol_points"]


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


def label(space: Space, values: Mapping[str, Any]) -> tuple:
    """(FLOPs, params) of a decoded candidate."""
    return space.cost(values)


def build_pool(space: Space, n: int, seed: int, window: Optional[PoolConfig] = None,
               max_draw_factor: int = 20, progress: bool = False) -> Pool:
    """Draw Sobol points in chunks until ``n`` unique candidates fall in ``window`` (the pool
    section's FLOPs / params bounds; None: no bounds)."""
    window = window or PoolConfig()
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
                f, p = space.cost(v)
                if not window.contains(f, p):
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
        raise SearchConfigError(f"pool: no candidate of {drawn} drawn falls in the window "
                                f"{ {k: v for k, v in window.to_dict().items() if k.endswith(('_min', '_max'))} }; "
                                "widen pool.flops_min/flops_max")
    if len(keys) < n:
        logger.warning("pool: only %d unique candidates in the window after %d draws (asked %d)", len(keys), drawn, n)
    return Pool(np.array(units), keys, np.array(flops), np.array(params), drawn, seed, vals)
