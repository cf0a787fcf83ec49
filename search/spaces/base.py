"""The search-space interface: what stages 1-3, the store and the report need of a space.

A space maps points of the unit cube [0, 1)^ndim to candidates. Each coordinate drives one
searched dimension (a ``Dim``: a numeric range or a choice) or a tie group of them. Given a
space, the search never looks inside a candidate; it asks the space to

- ``decode`` / ``decode_batch`` a Sobol point into values ({dim name: value}) and its
  canonical point (``unit_of``), and name it with a stable ``key``;
- ``encode_units``: the predictor's features of canonical points (vectorised);
- ``cost``: FLOPs and params of a candidate (stage 1's free proxy labels, stage 3's constraints);
- ``mutate`` / ``crossover`` canonical points (stage 3's genetic operators);
- ``candidate``: the ``Candidate`` handed to an executor (a space-neutral architecture:
  an ``ArchSpec`` + ``Recipe`` in the FBNet space, the benchmark's cell string in NAS-Bench-201);
- ``min_resources``, ``full_epochs``, ``describe`` and ``write_winner`` for checks, training
  length, the report and the run's outputs.

The style follows NASLib's search-space objects (sample, mutate, query), with Sobol points
as the sampling currency so a pool prefix stays well spread.
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from fbnet_zoo.errors import SearchConfigError

from ..candidate import Candidate


def _fail(key: str, value: Any, allowed: str) -> SearchConfigError:
    return SearchConfigError(f"{key}: {value!r} {allowed}")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Dim:
    """One searched dimension. kind: "int" / "float" (ranges) or "choice"."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    step: Optional[float] = None
    choices: Tuple[Any, ...] = ()
    tie: Optional[str] = None

    @property
    def levels(self) -> Optional[int]:
        """Number of discrete values (None: continuous)."""
        if self.kind == "choice":
            return len(self.choices)
        if self.step is None:
            return None
        return int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1

    @property
    def width(self) -> int:
        return len(self.choices) if self.kind == "choice" else 1

    def values(self) -> List[Any]:
        n = self.levels
        if n is None:
            return [self.low, self.high]
        return [self.value_at(i) for i in range(n)]

    def value_at(self, idx: int) -> Any:
        if self.kind == "choice":
            return self.choices[idx]
        v = self.low + idx * self.step
        return int(round(v)) if self.kind == "int" else float(round(v, 12))

    def decode(self, u: float) -> Any:
        n = self.levels
        if n is None:
            return float(self.low + min(max(u, 0.0), 1.0) * (self.high - self.low))
        return self.value_at(min(max(int(u * n), 0), n - 1))

    def index_of(self, value: Any) -> int:
        if self.kind == "choice":
            return self.choices.index(value)
        return int(round((value - self.low) / self.step))

    def to_unit(self, value: Any) -> float:
        """The canonical coordinate of a value (the centre of its level's bin)."""
        n = self.levels
        if n is None:
            return (value - self.low) / (self.high - self.low) if self.high > self.low else 0.0
        return (self.index_of(value) + 0.5) / n

    def describe(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "choice":
            d["choices"] = list(self.choices)
        else:
            d.update(low=self.low, high=self.high, step=self.step)
        if self.tie:
            d["tie"] = self.tie
        return d


def parse_dim(name: str, v: Any, kind_hint: Optional[str] = None) -> Tuple[Optional[Dim], Any]:
    """(Dim, None) for a searched value, (None, fixed value) for a scalar."""
    tie = None
    if isinstance(v, Mapping):
        unknown = [k for k in v if k not in ("choices", "range", "tie")]
        if unknown:
            raise _fail(f"{name}.{unknown[0]}", v[unknown[0]], "is not a dimension key; allowed: choices, range, tie")
        tie = v.get("tie")
        if tie is not None and (not isinstance(tie, str) or not tie):
            raise _fail(f"{name}.tie", tie, "is not a non-empty label string")
        if ("choices" in v) == ("range" in v):
            raise _fail(name, dict(v), "needs exactly one of 'choices' or 'range'")
        if "choices" in v:
            ch = v["choices"]
            if not isinstance(ch, list) or not ch:
                raise _fail(f"{name}.choices", ch, "is not a non-empty list")
            if len(set(json.dumps(c) for c in ch)) != len(ch):
                raise _fail(f"{name}.choices", ch, "has duplicates")
            for c in ch:
                if not isinstance(c, (int, float, str, bool)) or (isinstance(c, float) and not math.isfinite(c)):
                    raise _fail(f"{name}.choices", ch, "holds a value that is not a number, string or boolean")
            if len(ch) == 1:
                return None, ch[0]
            return Dim(name, "choice", choices=tuple(ch), tie=tie), None
        v = v["range"]
        if not isinstance(v, list):
            raise _fail(f"{name}.range", v, "is not a list [min, max] or [min, max, step]")
    if isinstance(v, list):
        if len(v) not in (2, 3) or not all(_is_num(x) for x in v):
            raise _fail(name, v, "is not a range [min, max] or [min, max, step] of numbers (use {choices: [...]} for choices)")
        low, high = v[0], v[1]
        step = v[2] if len(v) == 3 else None
        if low > high:
            raise _fail(name, v, "is an empty (inverted) range: min > max")
        if step is not None and step <= 0:
            raise _fail(name, v, "has a step that is not positive")
        is_int = all(isinstance(x, int) for x in v)
        if kind_hint == "int" and not is_int:
            raise _fail(name, v, "must be integers (this dimension is an integer)")
        if is_int and step is None:
            step = 1
        if low == high:
            return None, low
        kind = "int" if is_int else "float"
        return Dim(name, kind, float(low), float(high), None if step is None else float(step), tie=tie), None
    if isinstance(v, (int, float, str, bool)):
        if kind_hint == "int" and (isinstance(v, bool) or not isinstance(v, int)):
            raise _fail(name, v, "is not an integer")
        return None, v
    raise _fail(name, v, "is not a value, a range [min, max(, step)] or {choices: [...]}")


class Space(abc.ABC):
    """Coordinates over ``dims`` (set by the subclass, then ``_init_coords()``) and the
    generic operations on them; subclasses give the candidate-specific parts."""

    kind: str = ""
    num_classes: int = 1000
    flops_convention: str = "fvcore"  # how cost() counts (fbnet_zoo.conventions); the FBNet space takes the config's
    dims: List[Dim]

    def _init_coords(self) -> None:
        """One coordinate per tie group (first appearance order) or untied dim."""
        self.coord_names: List[str] = []
        self.dim_coord: List[int] = []
        ties: Dict[str, int] = {}
        for d in self.dims:
            if d.tie is not None:
                if d.tie not in ties:
                    ties[d.tie] = len(self.coord_names)
                    self.coord_names.append(f"tie:{d.tie}")
                self.dim_coord.append(ties[d.tie])
            else:
                self.dim_coord.append(len(self.coord_names))
                self.coord_names.append(d.name)
        self.ties = {label: [d.name for d in self.dims if d.tie == label] for label in ties}
        for label, names in self.ties.items():
            if len(names) < 2:
                raise _fail(f"space tie {label!r}", names, "is used by only one dimension (a tie needs two or more)")
        self.feature_names: List[str] = []
        for d in self.dims:
            if d.kind == "choice":
                self.feature_names += [f"{d.name}={c}" for c in d.choices]
            else:
                self.feature_names.append(d.name)

    # ------------------------------------------------------------------ points and values
    @property
    def ndim(self) -> int:
        return len(self.coord_names)

    def decode(self, u: Sequence[float]) -> Dict[str, Any]:
        """Unit point (length ndim) -> {dim name: value}."""
        if len(u) != self.ndim:
            raise ValueError(f"point has {len(u)} coordinates, the space has {self.ndim}")
        return {d.name: d.decode(float(u[c])) for d, c in zip(self.dims, self.dim_coord)}

    def canonical(self, u: Sequence[float]) -> np.ndarray:
        """The canonical point of u's candidate: decode(canonical(u)) == decode(u)."""
        return self.unit_of(self.decode(u))

    def unit_of(self, values: Mapping[str, Any]) -> np.ndarray:
        """The canonical unit point of decoded values: per coordinate, the middle of the
        interval where every dimension on it (a tie group) decodes to its given value."""
        lo = np.zeros(self.ndim)
        hi = np.ones(self.ndim)
        exact = np.full(self.ndim, np.nan)
        for d, c in zip(self.dims, self.dim_coord):
            n = d.levels
            if n is None:
                exact[c] = d.to_unit(values[d.name])
                continue
            i = d.index_of(values[d.name])
            lo[c] = max(lo[c], i / n)
            hi[c] = min(hi[c], (i + 1) / n)
        return np.where(np.isnan(exact), (lo + hi) / 2, exact)

    def decode_batch(self, units: np.ndarray) -> Tuple[List[Dict[str, Any]], np.ndarray]:
        """Vectorised decode of (N, ndim) points: (values per point, canonical points)."""
        units = np.atleast_2d(np.asarray(units, dtype=np.float64))
        n = units.shape[0]
        lo = np.zeros_like(units)
        hi = np.ones_like(units)
        exact = np.full_like(units, np.nan)
        columns = []
        for d, c in zip(self.dims, self.dim_coord):
            u = np.clip(units[:, c], 0.0, 1.0)
            levels = d.levels
            if levels is None:
                vals = d.low + u * (d.high - d.low)
                exact[:, c] = u
                columns.append([float(v) for v in vals])
                continue
            idx = np.minimum((u * levels).astype(np.int64), levels - 1)
            lo[:, c] = np.maximum(lo[:, c], idx / levels)
            hi[:, c] = np.minimum(hi[:, c], (idx + 1) / levels)
            table = [d.value_at(i) for i in range(levels)]
            columns.append([table[i] for i in idx])
        names = [d.name for d in self.dims]
        values = [dict(zip(names, row)) for row in zip(*columns)] if columns else [{} for _ in range(n)]
        canon = np.where(np.isnan(exact), (lo + hi) / 2, exact)
        return values, canon

    def key(self, values: Mapping[str, Any]) -> str:
        """Stable id of a candidate (its decoded values)."""
        blob = repr(tuple((d.name, values[d.name]) for d in self.dims))
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ predictor features
    @property
    def feature_width(self) -> int:
        return len(self.feature_names)

    def encode_units(self, units: np.ndarray) -> np.ndarray:
        """(N, ndim) unit points -> (N, width) float32 features: a choice is a one-hot block, a
        discrete number with n levels encodes level i as i / (n - 1) (its min-max normalised
        value), a continuous one as its coordinate."""
        units = np.atleast_2d(np.asarray(units, dtype=np.float64))
        n = units.shape[0]
        out = np.zeros((n, self.feature_width), dtype=np.float32)
        col = 0
        for d, c in zip(self.dims, self.dim_coord):
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

    # ------------------------------------------------------------------ genetic operators
    def mutate(self, unit: np.ndarray, pm: float, rng: np.random.Generator, sigma: float = 0.2) -> np.ndarray:
        """Each coordinate moves with probability ``pm`` (at least one moves) by a Gaussian step."""
        child = unit.copy()
        mask = rng.random(len(child)) < pm
        if not mask.any():
            mask[rng.integers(len(child))] = True
        step = rng.normal(0.0, sigma, len(child))
        child[mask] = np.clip(child[mask] + step[mask], 0.0, 1.0 - 1e-9)
        return child

    def crossover(self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Uniform crossover: each coordinate from either parent."""
        mask = rng.random(self.ndim) < 0.5
        return np.where(mask, a, b)

    # ------------------------------------------------------------------ candidate-specific
    @abc.abstractmethod
    def cost(self, values: Mapping[str, Any]) -> Tuple[float, float]:
        """(FLOPs, params) of a candidate, fvcore's convention, ``num_classes`` outputs."""

    @abc.abstractmethod
    def candidate(self, key: str, values: Mapping[str, Any], name: str = "candidate") -> Candidate:
        """What an executor trains (or looks up)."""

    @abc.abstractmethod
    def min_resources(self) -> Dict[str, float]:
        """FLOPs and params of the space's smallest candidate (constraint checks)."""

    @property
    @abc.abstractmethod
    def full_epochs(self) -> int:
        """Training length of a candidate when the config does not set stage2.epochs."""

    @abc.abstractmethod
    def write_winner(self, values: Mapping[str, Any], name: str, out_dir: str) -> Dict[str, Any]:
        """Write one stage-3 winner under ``out_dir``; returns what the report lists."""

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "ndim": self.ndim, "dims": [d.describe() for d in self.dims],
                "ties": self.ties, "num_classes": self.num_classes}
