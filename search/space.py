"""The search space as data: architecture and recipe dimensions decoded from a unit point.

A space section of a search config::

    space:
      num_classes: 1000       # classifier size used to count FLOPs / params
      width_divisor: 8
      input_size: 224         # arch input size when resolution is not searched
      blocks:                 # one entry per row of the paper's Table 2
        - {stage: 0, type: conv, kernel: 3, stride: 2, channels: [16, 24, 2], bias: true}
        - {stage: 2, type: ir, stride: 2, kernel: {choices: [3, 5]},
           expansion: {first: [4, 7], other: [2, 5]}, channels: [20, 32, 4], depth: [4, 7]}
        - {stage: 6, type: ir_pool, expansion: 6, channels: 1984}
      recipe:
        base: {epochs: 150, lr_decay: 0.963}          # fixed Recipe fields
        search:                                        # searched Recipe fields
          resolution: [224, 272, 8]
          lr: [0.020, 0.030, 0.001]
          optimizer: {choices: [rmsprop, sgd]}

A dimension value is a scalar (fixed), ``[min, max]`` / ``[min, max, step]`` (a range;
integer bounds without a step step by 1, float bounds without a step are continuous),
``{choices: [...]}``, or ``{range: [...]}``; either mapping may carry ``tie: <label>``: all
dimensions with one label share one coordinate (the same quantile of their own ranges;
identical ranges give identical values). ``kernel`` and ``expansion`` may be
``{first: ..., other: ...}``: the first block of the row (which carries the stride) and the
rest. ``depth`` counts blocks of the row (first + others).

A point u in [0, 1)^d (one coordinate per dimension or tie group) decodes to values, and
values build a valid (ArchSpec, Recipe): the space checks at load time that its extreme
points produce valid specs and recipes, so every decoded candidate is valid by construction.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from fbnet_zoo.registry import load_spec
from fbnet_zoo.spec import ArchSpec, BlockSpec, SpecError
from fbnet_zoo.training.recipe import Recipe, RecipeError

from .config import SearchConfigError

BLOCK_KEYS = ("stage", "type", "kernel", "expansion", "channels", "depth", "stride", "se", "act", "bias",
              "se_gate", "se_from", "se_ratio")
SEARCHABLE_BLOCK = ("kernel", "expansion", "channels", "depth")
SPACE_KEYS = ("num_classes", "width_divisor", "input_size", "blocks", "recipe")
RECIPE_FIELDS = tuple(f for f in Recipe.__dataclass_fields__)


def _fail(key: str, value: Any, allowed: str) -> SearchConfigError:
    return SearchConfigError(f"{key}: {value!r} {allowed}")


@functools.lru_cache(maxsize=65536)
def _row(*args: Any, **kw: Any) -> BlockSpec:
    """BlockSpec rows repeat across candidates: build (and validate) each distinct one once."""
    return BlockSpec(*args, **kw)


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


@dataclass(frozen=True)
class BlockGroup:
    """One Table-2 row: a first block (with the stride) plus depth-1 more."""

    index: int
    stage: int
    type: str
    fixed: Dict[str, Any]      # field -> fixed value (kernel.first, expansion.other, channels, depth, ...)
    searched: Dict[str, str]   # field -> dim name


_INT_FIELDS = {"kernel.first": "int", "kernel.other": "int", "channels": "int", "depth": "int"}


class SearchSpace:
    """Architecture + recipe dimensions of one search (mode-dependent, see config.MODES)."""

    def __init__(self, space: Mapping[str, Any], mode: str = "joint", fixed_arch: Any = None) -> None:
        if not isinstance(space, Mapping):
            raise _fail("space", space, "is not a mapping")
        unknown = [k for k in space if k not in SPACE_KEYS]
        if unknown:
            raise SearchConfigError(f"space.{unknown[0]}: unknown key; allowed: {list(SPACE_KEYS)}")
        self.mode = mode
        self.raw = dict(space)
        self.num_classes = space.get("num_classes", 1000)
        self.width_divisor = space.get("width_divisor", 8)
        self.input_size = space.get("input_size", None)
        for key, val in (("space.num_classes", self.num_classes), ("space.width_divisor", self.width_divisor)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise _fail(key, val, "is not a positive integer")
        if self.input_size is not None and (isinstance(self.input_size, bool) or not isinstance(self.input_size, int)
                                            or self.input_size < 8):
            raise _fail("space.input_size", self.input_size, "is not an integer >= 8")
        self.dims: List[Dim] = []
        self.groups: List[BlockGroup] = []
        self.fixed_arch: Optional[ArchSpec] = None
        if mode == "recipe_only":
            try:
                self.fixed_arch = load_spec(fixed_arch)
            except (SpecError, KeyError) as e:
                raise _fail("fixed_arch", fixed_arch, f"is not a valid arch ({e})") from None
        else:
            self._parse_blocks(space.get("blocks"))
        self._parse_recipe(space.get("recipe", {}) or {})
        if not self.dims:
            raise SearchConfigError("space: has no searched dimension in mode "
                                    f"{mode!r} (give ranges or choices)")
        # coordinates: one per tie group (first appearance order) or untied dim
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
        self._check_corners()

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "SearchSpace":
        return cls(cfg["space"], cfg.get("mode", "joint"), cfg.get("fixed_arch"))

    def _add(self, dim: Dim) -> str:
        self.dims.append(dim)
        return dim.name

    def _parse_blocks(self, blocks: Any) -> None:
        if not isinstance(blocks, list) or not blocks:
            raise _fail("space.blocks", blocks, "is not a non-empty list of block rows")
        last_stage = -1
        for gi, b in enumerate(blocks):
            path = f"space.blocks[{gi}]"
            if not isinstance(b, Mapping):
                raise _fail(path, b, "is not a mapping")
            unknown = [k for k in b if k not in BLOCK_KEYS]
            if unknown:
                raise SearchConfigError(f"{path}.{unknown[0]}: unknown key; allowed: {list(BLOCK_KEYS)}")
            btype = b.get("type")
            if btype not in ("conv", "ir", "ir_pool"):
                raise _fail(f"{path}.type", btype, "is not one of ['conv', 'ir', 'ir_pool']")
            stage = b.get("stage", last_stage + 1)
            if isinstance(stage, bool) or not isinstance(stage, int) or stage < max(last_stage, 0) \
                    or stage > last_stage + 1:
                raise _fail(f"{path}.stage", stage, f"must be {max(last_stage, 0)} or {last_stage + 1} "
                                                   "(stages in order, no gaps)")
            last_stage = stage
            if "channels" not in b:
                raise SearchConfigError(f"{path}.channels: missing (required)")
            if btype == "conv" and "expansion" in b:
                raise _fail(f"{path}.expansion", b["expansion"], "is not allowed on a 'conv' row")
            if btype == "ir_pool":
                for k in ("kernel", "depth", "stride"):
                    if k in b and not (k in ("depth", "stride") and b[k] == 1):
                        raise _fail(f"{path}.{k}", b[k], "is not allowed on an 'ir_pool' row")
            fixed: Dict[str, Any] = {}
            searched: Dict[str, str] = {}
            for field in SEARCHABLE_BLOCK:
                default = {"kernel": 3, "expansion": 1, "depth": 1}.get(field)
                v = b.get(field, default)
                if field in ("kernel", "expansion"):
                    if isinstance(v, Mapping) and ("first" in v or "other" in v):
                        extra = [k for k in v if k not in ("first", "other")]
                        if extra or "first" not in v or "other" not in v:
                            raise _fail(f"{path}.{field}", dict(v), "needs exactly 'first' and 'other'")
                        parts = {"first": v["first"], "other": v["other"]}
                        for part, pv in parts.items():
                            key = f"{field}.{part}"
                            dim, val = parse_dim(f"{path}.{key}", pv, _INT_FIELDS.get(key))
                            if dim:
                                searched[key] = self._add(dim)
                            else:
                                fixed[key] = val
                    else:
                        dim, val = parse_dim(f"{path}.{field}", v, _INT_FIELDS.get(f"{field}.first"))
                        if dim:
                            searched[f"{field}.first"] = searched[f"{field}.other"] = self._add(dim)
                        else:
                            fixed[f"{field}.first"] = fixed[f"{field}.other"] = val
                else:
                    dim, val = parse_dim(f"{path}.{field}", v, _INT_FIELDS.get(field))
                    if dim:
                        searched[field] = self._add(dim)
                    else:
                        fixed[field] = val
            for field in ("stride", "se", "act", "bias", "se_gate", "se_from", "se_ratio"):
                if field in b:
                    if isinstance(b[field], (list, Mapping)):
                        raise _fail(f"{path}.{field}", b[field], "is fixed per row (not searchable)")
                    fixed[field] = b[field]
            # value checks over every level (kernels odd, depth/channels/expansion positive)
            for key in ("kernel.first", "kernel.other", "channels", "depth", "expansion.first", "expansion.other"):
                vals = [fixed[key]] if key in fixed else self._dim(searched[key]).values()
                for val in vals:
                    if not _is_num(val):
                        raise _fail(f"{path}.{key}", val, "is not a number")
                    if key.startswith("kernel") and (not isinstance(val, int) or val % 2 == 0 or val < 1):
                        raise _fail(f"{path}.{key}", val, "is not an odd positive integer")
                    if key in ("channels", "depth") and (not float(val).is_integer() or val < 1):
                        raise _fail(f"{path}.{key}", val, "is not a positive integer")
                    if key.startswith("expansion") and val <= 0:
                        raise _fail(f"{path}.{key}", val, "is not positive")
            self.groups.append(BlockGroup(gi, stage, btype, fixed, searched))

    def _dim(self, name: str) -> Dim:
        for d in self.dims:
            if d.name == name:
                return d
        raise KeyError(name)

    def _parse_recipe(self, recipe: Any) -> None:
        if not isinstance(recipe, Mapping):
            raise _fail("space.recipe", recipe, "is not a mapping with 'base' and 'search'")
        unknown = [k for k in recipe if k not in ("base", "search")]
        if unknown:
            raise SearchConfigError(f"space.recipe.{unknown[0]}: unknown key; allowed: ['base', 'search']")
        base = dict(recipe.get("base") or {})
        search = dict(recipe.get("search") or {})
        for where, d in (("base", base), ("search", search)):
            bad = [k for k in d if k not in RECIPE_FIELDS]
            if bad:
                raise SearchConfigError(f"space.recipe.{where}.{bad[0]}: unknown recipe field; allowed: {list(RECIPE_FIELDS)}")
        try:
            self.base_recipe = Recipe.from_dict(base)
        except RecipeError as e:
            raise SearchConfigError(f"space.recipe.base: {e}") from None
        self.recipe_dims: Dict[str, str] = {}
        if self.mode == "arch_only":
            search = {}
        for field, v in search.items():
            hint = "int" if field in ("epochs", "batch_size", "resolution") else None
            dim, val = parse_dim(f"space.recipe.search.{field}", v, hint)
            if dim is None:
                base[field] = val
                continue
            self.recipe_dims[field] = self._add(dim.__class__(**{**dim.__dict__, "name": f"recipe.{field}"}))
        self.recipe_fixed = base
        if "resolution" not in self.recipe_dims and base.get("resolution") is None:
            size = self.fixed_arch.input_size if self.fixed_arch is not None else self.input_size
            if size is None:
                raise SearchConfigError("space.input_size: missing; give it or a recipe resolution (base or search)")
            self.recipe_fixed["resolution"] = size

    # ------------------------------------------------------------------ decoding
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
        out = np.where(np.isnan(exact), (lo + hi) / 2, exact)
        return out

    def resolution_of(self, values: Mapping[str, Any]) -> int:
        if "resolution" in self.recipe_dims:
            return int(values[self.recipe_dims["resolution"]])
        return int(self.recipe_fixed["resolution"])

    def build(self, values: Mapping[str, Any], name: str = "candidate") -> Tuple[ArchSpec, Recipe]:
        recipe_kw = dict(self.recipe_fixed)
        for field, dname in self.recipe_dims.items():
            recipe_kw[field] = values[dname]
        recipe = Recipe.from_dict(recipe_kw)
        return self.build_arch(values, name, recipe.dropout), recipe

    def build_arch(self, values: Mapping[str, Any], name: str = "candidate",
                   dropout: Optional[float] = None) -> ArchSpec:
        if dropout is None:
            dropout = values.get(self.recipe_dims.get("dropout", ""), self.recipe_fixed.get("dropout", 0.2))
        resolution = self.resolution_of(values)
        if self.fixed_arch is not None:
            return self.fixed_arch.replace(name=name, input_size=resolution, dropout=dropout)
        stages: List[List[BlockSpec]] = []
        for g in self.groups:
            def val(key: str) -> Any:
                return g.fixed[key] if key in g.fixed else values[g.searched[key]]

            ch = int(val("channels"))
            depth = int(val("depth"))
            common = {k: g.fixed[k] for k in ("se", "act", "se_gate", "se_from", "se_ratio") if k in g.fixed}
            stride = g.fixed.get("stride", 1)
            if g.type == "conv":
                rows = [_row("conv", ch, repeats=depth, stride=stride, kernel=int(val("kernel.first")),
                             act=common.get("act", "hswish"), bias=g.fixed.get("bias", False))]
            elif g.type == "ir_pool":
                rows = [_row("ir_pool", ch, expansion=val("expansion.first"), act=common.get("act", "hswish"))]
            else:
                rows = [_row("ir", ch, 1, stride, int(val("kernel.first")), val("expansion.first"), **common)]
                if depth > 1:
                    rows.append(_row("ir", ch, depth - 1, 1, int(val("kernel.other")), val("expansion.other"),
                                     **common))
            if g.stage == len(stages):
                stages.append([])
            stages[g.stage].extend(rows)
        return ArchSpec(name=name, input_size=resolution, stages=tuple(tuple(st) for st in stages),
                        width_divisor=self.width_divisor, dropout=dropout)

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

    def decode_point(self, u: Sequence[float], name: str = "candidate") -> Tuple[ArchSpec, Recipe]:
        return self.build(self.decode(u), name)

    def key(self, values: Mapping[str, Any]) -> str:
        """Stable id of a candidate (its decoded values)."""
        blob = repr(tuple((d.name, values[d.name]) for d in self.dims))
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ extremes
    def extreme_point(self, high: bool) -> np.ndarray:
        """The point whose numeric dims are all at max (high) or min; choices by value order."""
        u = np.empty(self.ndim)
        for d, c in zip(self.dims, self.dim_coord):
            if d.kind == "choice":
                order = sorted(range(len(d.choices)), key=lambda i: (str(type(d.choices[i])), d.choices[i]))
                idx = order[-1] if high else order[0]
                u[c] = (idx + 0.5) / len(d.choices)
            else:
                u[c] = 1.0 - 1e-9 if high else 0.0
        return u

    def _check_corners(self) -> None:
        from fbnet_zoo.complexity import complexity

        for label, high in (("minimum", False), ("maximum", True)):
            u = self.extreme_point(high)
            try:
                arch, _ = self.decode_point(u, f"{label}_corner")
                complexity(arch, None, self.num_classes)
            except (SpecError, RecipeError) as e:
                raise SearchConfigError(f"space: its {label} corner is not a valid candidate: {e}") from None
        rng = np.random.default_rng(0)
        for _ in range(8):
            try:
                arch, _ = self.decode_point(rng.random(self.ndim), "probe")
                complexity(arch, None, self.num_classes)
            except (SpecError, RecipeError) as e:
                raise SearchConfigError(f"space: a sampled candidate is not valid: {e}") from None

    def min_resources(self) -> Dict[str, float]:
        """FLOPs and params of the smallest candidate (all sizes at their minimum)."""
        from fbnet_zoo.complexity import complexity

        arch, _ = self.decode_point(self.extreme_point(False), "min")
        cx = complexity(arch, None, self.num_classes)
        return {"flops": float(cx.flops), "params": float(cx.params)}

    def describe(self) -> Dict[str, Any]:
        return {"mode": self.mode, "ndim": self.ndim, "dims": [d.describe() for d in self.dims],
                "ties": self.ties, "num_classes": self.num_classes}
