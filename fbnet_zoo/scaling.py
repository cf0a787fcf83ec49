"""Compound scaling of a spec (width, depth, resolution), as FBNetV3-A and F/G were
derived from the searched B and E."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Union

from .errors import check_number
from .registry import load_spec
from .spec import ArchSpec, make_divisible


def _factor(name: str, value: Any) -> float:
    return float(check_number(name, value, 0.0))


def scale(spec: Union[ArchSpec, Mapping[str, Any], str], width: float = 1.0, depth: float = 1.0,
          resolution: float = 1.0, name: Optional[str] = None, scale_head: bool = False,
          resolution_multiple: int = 8) -> ArchSpec:
    """A new spec with channels x ``width`` (rounded to the spec's width divisor), the repeats
    of every multi-block-capable row x ``depth`` (rounded up), and the input size x
    ``resolution`` (rounded to ``resolution_multiple``). The pooled head's width stays
    unless ``scale_head`` (FBNetV3-F/G keep 1984)."""
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
                changes["repeats"] = max(1, math.ceil(row.repeats * depth - 1e-9))
            rows.append(dataclasses.replace(row, **changes))
        stages.append(tuple(rows))
    size = max(resolution_multiple, int(round(spec.input_size * resolution / resolution_multiple)) * resolution_multiple)
    new_name = name or f"{spec.name}_w{width:g}_d{depth:g}_r{resolution:g}"
    return spec.replace(name=new_name, stages=tuple(stages), input_size=size)
