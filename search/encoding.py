"""The predictor's input: one-hot for choices, min-max normalised numbers.

Features are computed straight from unit points (vectorised over a whole pool): a discrete
numeric dimension with n levels encodes level i as i / (n - 1) (its min-max normalised value),
a continuous one as its coordinate, a choice as a one-hot block.
"""

from __future__ import annotations

from typing import List, Mapping, Any

import numpy as np

from .space import SearchSpace


class Encoder:
    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.names: List[str] = []
        for d in space.dims:
            if d.kind == "choice":
                self.names += [f"{d.name}={c}" for c in d.choices]
            else:
                self.names.append(d.name)

    @property
    def width(self) -> int:
        return len(self.names)

    def encode_units(self, units: np.ndarray) -> np.ndarray:
        """(N, ndim) unit points -> (N, width) float32 features."""
        units = np.atleast_2d(np.asarray(units, dtype=np.float64))
        n = units.shape[0]
        out = np.zeros((n, self.width), dtype=np.float32)
        col = 0
        for d, c in zip(self.space.dims, self.space.dim_coord):
            u = np.clip(units[:, c], 0.0, 1.0)
            levels = d.levels
            if d.kind == "choice":
                idx = np.minimum((u * levels).astype(np.int64), levels - 1)
                out[np.arange(n), col + idx] = 1.0
                col += levels
                continue
            if levels is None:
                out[:, col] = u
            else:
                idx = np.minimum((u * levels).astype(np.int64), levels - 1)
                out[:, col] = idx / max(levels - 1, 1)
            col += 1
        return out

    def encode_values(self, values: Mapping[str, Any]) -> np.ndarray:
        """{dim name: value} -> (width,) features (the same as encode_units of its point)."""
        return self.encode_units(self.space.unit_of(values)[None])[0]
