"""Scaling a spec in width, depth and resolution, and the compound rule of the FBNetV3 family.

The paper derives FBNetV3-A from the searched B by resolution alone (A is B at 224) and
FBNetV3-F/G from the searched E by EfficientNet's compound scaling: with a coefficient phi,
depth x alpha^phi, width x beta^phi, resolution x gamma^phi, where alpha * beta^2 * gamma^2 = 2
(so FLOPs grow by about 2^phi). The paper does not state alpha/beta/gamma or phi;
``fit_compound`` derives them from a base and its released scaled members, and
``FBNETV3_COMPOUND`` / ``FBNETV3_PHI`` are what it derives from E, F and G
(tests recompute them).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .complexity import count_flops
from .errors import SpecError, check_number
from .registry import load_spec
from .spec import ArchSpec, make_divisible

SpecLike = Union[ArchSpec, Mapping[str, Any], str]
RESOLUTION_MULTIPLE = 8


def _factor(name: str, value: Any) -> float:
    return float(check_number(name, value, 0.0))


def scaled_repeats(repeats: int, depth: float) -> int:
    """A row of one block stays one block (Table 2's first blocks, and one-block rows); a
    row of n blocks becomes round(n * depth) blocks, at least one. This is how F and G
    deepen E: 7 -> 8 and 5 -> 6 blocks, never a second stride-carrying block."""
    if repeats == 1:
        return 1
    return max(1, int(math.floor(repeats * depth + 0.5)))


def scaled_size(input_size: int, resolution: float, multiple: int = RESOLUTION_MULTIPLE) -> int:
    return max(multiple, int(round(input_size * resolution / multiple)) * multiple)


def scale(spec: SpecLike, width: float = 1.0, depth: float = 1.0, resolution: float = 1.0,
          name: Optional[str] = None, scale_head: bool = False,
          resolution_multiple: int = RESOLUTION_MULTIPLE, input_size: Optional[int] = None) -> ArchSpec:
    """A new spec with channels x ``width`` (rounded to the spec's width divisor), the repeats
    of every multi-block "ir" row x ``depth`` (``scaled_repeats``), and the input size x
    ``resolution`` rounded to ``resolution_multiple`` (or exactly ``input_size`` if given).
    The pooled head's width stays unless ``scale_head`` (FBNetV3-F/G keep 1984)."""
    spec = load_spec(spec)
    width, depth, resolution = _factor("width", width), _factor("depth", depth), _factor("resolution", resolution)
    stages = []
    for stage in spec.stages:
        rows = []
        for row in stage:
            changes = {}
            if row.type != "ir_pool" or scale_head:
                changes["out_channels"] = make_divisible(row.out_channels * width, spec.width_divisor)
            if row.type == "ir":
                changes["repeats"] = scaled_repeats(row.repeats, depth)
            rows.append(dataclasses.replace(row, **changes))
        stages.append(tuple(rows))
    if input_size is None:
        size = scaled_size(spec.input_size, resolution, resolution_multiple)
    else:
        size = int(_factor("input_size", input_size))
    new_name = name or f"{spec.name}_w{width:g}_d{depth:g}_r{resolution:g}"
    return spec.replace(name=new_name, stages=tuple(stages), input_size=size)


# --------------------------------------------------------------------------- compound rule
@dataclass(frozen=True)
class CompoundScaling:
    """EfficientNet's compound rule: depth alpha^phi, width beta^phi, resolution gamma^phi."""

    alpha: float  # depth
    beta: float  # width
    gamma: float  # resolution

    def __post_init__(self) -> None:
        for f in ("alpha", "beta", "gamma"):
            _factor(f, getattr(self, f))

    @property
    def flops_base(self) -> float:
        """alpha * beta^2 * gamma^2: FLOPs grow by about this to the power phi."""
        return self.alpha * self.beta ** 2 * self.gamma ** 2

    def factors(self, phi: float) -> Dict[str, float]:
        if isinstance(phi, bool) or not isinstance(phi, (int, float)) or not math.isfinite(phi):
            raise SpecError(f"phi: {phi!r} is not a finite number")
        return {"width": self.beta ** phi, "depth": self.alpha ** phi, "resolution": self.gamma ** phi}

    def apply(self, spec: SpecLike, phi: float, name: Optional[str] = None) -> ArchSpec:
        return scale(spec, name=name, **self.factors(phi))


def _channels(spec: ArchSpec) -> np.ndarray:
    return np.array([r.out_channels for s in spec.stages for r in s if r.type != "ir_pool"], dtype=float)


def _repeats(spec: ArchSpec) -> np.ndarray:
    return np.array([r.repeats for s in spec.stages for r in s if r.type == "ir"], dtype=float)


def _best(grid: np.ndarray, loss: np.ndarray) -> float:
    """The middle of the grid points with the least loss (they form an interval)."""
    best = np.flatnonzero(loss <= loss.min() + 1e-12)
    return float((grid[best[0]] + grid[best[-1]]) / 2)


def fitted_factors(base: SpecLike, member: SpecLike) -> Dict[str, float]:
    """The width, depth and resolution multipliers that, through ``scale``'s rounding, best
    reproduce ``member`` from ``base`` (same rows in the same order): width minimises the
    squared log error of the built channels, depth the squared error of the repeats."""
    base, member = load_spec(base), load_spec(member)
    cb, cm, rb, rm = _channels(base), _channels(member), _repeats(base), _repeats(member)
    if cb.shape != cm.shape or rb.shape != rm.shape:
        raise SpecError(f"{member.name}: its rows do not correspond to {base.name}'s; cannot fit scaling factors")
    grid = np.round(np.arange(0.5, 2.0 + 1e-9, 0.0005), 4)
    div = base.width_divisor
    width_loss = np.array([np.sum((np.log([make_divisible(c * w, div) for c in cb]) - np.log(cm)) ** 2)
                           for w in grid])
    depth_loss = np.array([np.sum((np.array([scaled_repeats(int(n), d) for n in rb]) - rm) ** 2) for d in grid])
    return {"width": _best(grid, width_loss), "depth": _best(grid, depth_loss),
            "resolution": member.input_size / base.input_size}


def fit_compound(base: SpecLike, members: Sequence[SpecLike], convention: str = "paper"
                 ) -> Tuple[CompoundScaling, Dict[str, float]]:
    """alpha/beta/gamma and each member's phi, derived from released scaled members.

    phi is EfficientNet's: FLOPs grow by 2^phi, so a member's phi = log2(its FLOPs / the
    base's), counted in ``convention``. The shape of the rule comes from the members'
    structure: log alpha, log beta, log gamma are the least-squares slopes (through the
    origin) of each member's log depth, log width, log resolution multiplier
    (``fitted_factors``) against phi, then scaled together so alpha * beta^2 * gamma^2 = 2.
    """
    base = load_spec(base)
    base_flops = count_flops(base, convention=convention)
    fits, phi = {}, {}
    for m in members:
        m = load_spec(m)
        fits[m.name] = fitted_factors(base, m)
        phi[m.name] = math.log2(count_flops(m, convention=convention) / base_flops)
    norm = sum(p * p for p in phi.values())
    if norm == 0:
        raise SpecError("members: none of them differs in FLOPs from the base; nothing to fit")
    slope = {k: sum(phi[n] * math.log(fits[n][k]) for n in fits) / norm for k in ("depth", "width", "resolution")}
    to_two = math.log(2) / (slope["depth"] + 2 * slope["width"] + 2 * slope["resolution"])
    rule = CompoundScaling(alpha=math.exp(slope["depth"] * to_two), beta=math.exp(slope["width"] * to_two),
                           gamma=math.exp(slope["resolution"] * to_two))
    return rule, phi


# What fit_compound("FBNetV3-E", ["FBNetV3-F", "FBNetV3-G"]) derives, to 4 digits (tests
# recompute it): E -> F is phi 0.6328 (input 288, not the released 272: F widened E at almost
# its resolution), E -> G is phi 1.4827 (input 320, as released).
FBNETV3_COMPOUND = CompoundScaling(alpha=1.1026, beta=1.1803, gamma=1.1411)
FBNETV3_PHI: Dict[str, float] = {"FBNetV3-F": 0.6328, "FBNetV3-G": 1.4827}
# FBNetV3-A is FBNetV3-B at this input size, nothing else changed.
FBNETV3_A_INPUT_SIZE = 224
