"""The predictor's input: the space's own features of its canonical points.

For dimension-based spaces (both shipped ones): one-hot for choices, min-max normalised
numbers (a discrete dimension with n levels encodes level i as i / (n - 1), a continuous one
as its coordinate), computed straight from unit points, vectorised over a whole pool.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping

import numpy as np

from .spaces import Space


class Encoder:
    def __init__(self, space: Space) -> None:
        self.space = space

    @property
    def names(self) -> List[str]:
        return self.space.feature_names

    @property
    def width(self) -> int:
        return self.space.feature_width

    def encode_units(self, units: np.ndarray) -> np.ndarray:
        """(N, ndim) unit points -> (N, width) float32 features."""
        return self.space.encode_units(units)

    def encode_values(self, values: Mapping[str, Any]) -> np.ndarray:
        """{dim name: value} -> (width,) features (the same as encode_units of its point)."""
        return self.encode_units(self.space.unit_of(values)[None])[0]

    def recipe_columns(self) -> Dict[str, List[Any]]:
        """The feature columns of the training-recipe dimensions (named ``recipe.*``): one list
        of one-hot columns per choice dimension, and the numeric columns. Empty for spaces
        without a recipe (architecture-only, NAS-Bench-201)."""
        choices: List[List[int]] = []
        numbers: List[int] = []
        col = 0
        for d in self.space.dims:
            if d.name.startswith("recipe."):
                if d.kind == "choice":
                    choices.append(list(range(col, col + d.width)))
                else:
                    numbers.append(col)
            col += d.width
        assert col == self.width, "feature layout and dimensions disagree"
        return {"choices": choices, "numbers": numbers}
