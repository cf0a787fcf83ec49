"""The FBNet block space (``space.kind: fbnet``, the default): architecture and recipe
dimensions decoded from a unit point.

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
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from fbnet_zoo.blocks import Classifier, Cx, block_complexity, headless_pool_cx
from fbnet_zoo.complexity import complexity
from fbnet_zoo.conventions import cost_rules
from fbnet_zoo.errors import SearchConfigError, check_keys
from fbnet_zoo.registry import load_spec
from fbnet_zoo.spec import ArchSpec, BlockSpec, SpecError, make_divisible, walk_rows
from fbnet_zoo.training.recipe import Recipe, RecipeError

from ..candidate import Candidate
from .base import Dim, Space, _fail, _is_num, parse_dim

BLOCK_KEYS = ("stage", "type", "kernel", "expansion", "channels", "depth", "stride", "se", "act", "bias",
              "se_gate", "se_from", "se_ratio")
SEARCHABLE_BLOCK = ("kernel", "expansion", "channels", "depth")
SPACE_KEYS = ("kind", "num_classes", "width_divisor", "input_size", "blocks", "recipe")
RECIPE_FIELDS = tuple(f for f in Recipe.__dataclass_fields__)


@functools.lru_cache(maxsize=65536)
def _row(*args: Any, **kw: Any) -> BlockSpec:
    """BlockSpec rows repeat across candidates: build (and validate) each distinct one once."""
    return BlockSpec(*args, **kw)


class RowCostCache:
    """The zoo's analytic counter (fbnet_zoo.blocks cost twins, as fbnet_zoo.complexity walks
    them), memoised per (row, input shape): rows recur across a pool, so labelling 20K
    candidates costs a dict lookup per row instead of a walk per block. Equal to
    ``fbnet_zoo.count_flops`` / ``count_params`` exactly (tests pin it)."""

    def __init__(self, convention: str = "fvcore", max_entries: int = 500_000) -> None:
        self._rows: Dict[tuple, tuple] = {}
        self.rules = cost_rules(convention, "flops_convention")
        self.max_entries = max_entries

    def cost(self, arch: ArchSpec, num_classes: int) -> tuple:
        h = w = arch.input_size
        c = arch.in_channels
        flops = params = 0
        div = arch.width_divisor
        for stage in arch.stages:
            for row in stage:
                key = (row, h, w, c, div)
                hit = self._rows.get(key)
                if hit is None:
                    cx = Cx(h, w, c, rules=self.rules)
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
        cx = Cx(h, w, c, rules=self.rules)
        if num_classes > 0:
            Classifier.complexity(cx, num_classes)
        else:  # the headless forward pools, as fbnet_zoo.complexity counts it
            headless_pool_cx(cx)
        flops += cx.flops
        params += cx.params
        return float(flops), float(params)


def built_channels(name: str, dim: Optional[Dim], fixed: Any, divisor: int) -> Tuple[Optional[Dim], Any]:
    """A channels dimension as the builder builds it: every value rounded with
    ``make_divisible(c, divisor)`` (nearest multiple, bumped up one if that loses over 5%),
    duplicates merged. The predictor then encodes the width that is built, and sampling is
    uniform over built widths. An uneven built grid becomes choices."""
    if dim is None:
        return None, make_divisible(fixed, divisor) if _is_num(fixed) else fixed
    if dim.kind == "float" and dim.step is None:
        raise _fail(name, [dim.low, dim.high], "is a continuous range; channels need a step or choices")
    values = dim.values()
    if not all(_is_num(v) and float(v).is_integer() and v >= 1 for v in values):
        raise _fail(name, values, "holds a value that is not a positive integer")
    built = sorted({make_divisible(int(v), divisor) for v in values})
    if len(built) == 1:
        return None, built[0]
    steps = {b - a for a, b in zip(built, built[1:])}
    if len(steps) == 1:
        return Dim(name, "int", float(built[0]), float(built[-1]), float(steps.pop()), tie=dim.tie), None
    return Dim(name, "choice", choices=tuple(built), tie=dim.tie), None


@dataclass(frozen=True)
class BlockGroup:
    """One Table-2 row: a first block (with the stride) plus depth-1 more."""

    index: int
    stage: int
    type: str
    fixed: Dict[str, Any]      # field -> fixed value (kernel.first, expansion.other, channels, depth, ...)
    searched: Dict[str, str]   # field -> dim name


_INT_FIELDS = {"kernel.first": "int", "kernel.other": "int", "channels": "int", "depth": "int"}


class FBNetSpace(Space):
    """Architecture + recipe dimensions of one search (mode-dependent, see config.MODES)."""

    kind = "fbnet"
    zoo_archs = True   # winners are ArchSpecs: scaled into a family, registered with the zoo

    def __init__(self, space: Mapping[str, Any], mode: str = "joint", fixed_arch: Any = None,
                 flops_convention: str = "fvcore") -> None:
        check_keys("space", space, SPACE_KEYS, error=SearchConfigError)
        self.mode = mode
        self.flops_convention = flops_convention  # how FLOPs/params are counted (fbnet_zoo.conventions)
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
        self._init_coords()
        self.cost_cache = RowCostCache(flops_convention)
        self._check_corners()

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_config(cls, cfg: Any) -> "FBNetSpace":
        """The space of a SearchConfig (``space``, ``mode``, ``fixed_arch``, ``flops_convention``);
        a loaded config already holds it: ``cfg.search_space``."""
        return cls(cfg.space, cfg.mode, cfg.fixed_arch, cfg.flops_convention)

    def _add(self, dim: Dim) -> str:
        self.dims.append(dim)
        return dim.name

    def _parse_blocks(self, blocks: Any) -> None:
        if not isinstance(blocks, list) or not blocks:
            raise _fail("space.blocks", blocks, "is not a non-empty list of block rows")
        last_stage = -1
        for gi, b in enumerate(blocks):
            path = f"space.blocks[{gi}]"
            check_keys(path, b, BLOCK_KEYS, error=SearchConfigError)
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
                    if field == "channels":
                        dim, val = built_channels(f"{path}.channels", dim, val, self.width_divisor)
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
        check_keys("space.recipe", recipe, ("base", "search"), error=SearchConfigError,
                   what="a mapping with 'base' and 'search'")
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

    def decode_point(self, u: Sequence[float], name: str = "candidate") -> Tuple[ArchSpec, Recipe]:
        return self.build(self.decode(u), name)

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
        arch, _ = self.decode_point(self.extreme_point(False), "min")
        cx = complexity(arch, None, self.num_classes, self.flops_convention)
        return {"flops": float(cx.flops), "params": float(cx.params)}

    # ------------------------------------------------------------------ the Space interface
    def cost(self, values: Mapping[str, Any]) -> Tuple[float, float]:
        return self.cost_cache.cost(self.build_arch(values), self.num_classes)

    def candidate(self, key: str, values: Mapping[str, Any], name: str = "candidate") -> Candidate:
        arch, recipe = self.build(values, name=name)
        return Candidate(key, arch, recipe)

    @property
    def full_epochs(self) -> int:
        return int(self.base_recipe.epochs)

    def write_winner(self, values: Mapping[str, Any], name: str, out_dir: str) -> Dict[str, Any]:
        arch, recipe = self.build(values, name=name)
        ap = os.path.join(out_dir, "archs", f"{name}.yaml")
        rp = os.path.join(out_dir, "recipes", f"{name}.yaml")
        os.makedirs(os.path.dirname(ap), exist_ok=True)
        os.makedirs(os.path.dirname(rp), exist_ok=True)
        arch.save_yaml(ap)
        recipe.save_yaml(rp)
        f, p = self.cost(values)
        return {"name": name, "arch_yaml": ap, "recipe_yaml": rp, "flops": f, "params": p}

    def describe(self) -> Dict[str, Any]:
        return {**super().describe(), "mode": self.mode}
