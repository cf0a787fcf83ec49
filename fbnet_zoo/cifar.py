"""CIFAR-10 variants of zoo and searched architectures (FBNetV3 paper, Sec. 4.3).

The paper transfers its ImageNet models to CIFAR-10 with two changes and no distillation:

1. **Stride.** "The second stride-2 block is replaced by stride 1." Precisely: walk the
   network's blocks in forward order (``ArchSpec.blocks()``: the stem conv first, then every
   block of every row, the pooled head last) and take the *second* block whose stride is 2.
   Only the first block of a row carries the row's stride, so that block is the first block
   of a row; ``cifar_variant`` sets that row's stride to 1. For every FBNetV3 zoo model it is
   the first block of stages[2] (the stem is the first stride-2 block), so the network's
   output stride drops from 32 to 16 and a 32x32 image leaves a 2x2 final feature map
   instead of 1x1. Channels, kernels, expansions, repeats and SE are untouched. If that row
   overrides its depthwise padding (``dw_padding``, reference archs) the override is dropped,
   because a padding chosen for stride 2 would shrink the map at stride 1; the block then
   pads ``kernel // 2`` ("same"), like every other stride-1 block.

2. **Resolution.** "The base input resolution is kept at 32x32 and scaled up for larger
   models by their scaling." Rule, with ``base_resolution = 32``::

       ratio = spec.input_size / base.input_size
       size  = max(base_resolution, round(base_resolution * ratio / multiple) * multiple)

   ``base`` is the model the spec was scaled from: FBNetV3-A was scaled down from FBNetV3-B,
   F and G were scaled up from E (``FAMILY_BASES``; their input sizes are read from the
   registry, not copied here); the searched models B, C, D, E and any other spec (a searched
   arch YAML, a user spec) are their own base, i.e. 32x32, unless ``base=`` names the spec
   they were scaled from. Models scaled *down* keep 32 ("scaled up for larger models"), so
   with ``multiple=1``: A-E -> 32, F -> 33 (272/264), G -> 39 (320/264).

FLOPs of a variant come from the zoo's analytic counter,
``count_flops(variant, num_classes=10)`` (at ``variant.input_size``), in fvcore's convention.

The experiment (timm EfficientNet baselines adapted the same way, the training jobs and the
results files) is ``fbnet_zoo.training.cifar10``.

Note: FBNetV3-A is FBNetV3-B at a lower ImageNet resolution, so with this rule their CIFAR
variants are the same network (``base=`` / ``resolution=`` choose another reading).
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from typing import Any, Mapping, Optional, Tuple, Union

from .errors import SpecError
from .registry import load_spec, normalize_name
from .spec import ArchSpec

SpecLike = Union[ArchSpec, Mapping[str, Any], str]

CIFAR_BASE_RESOLUTION = 32
CIFAR_NUM_CLASSES = 10
CIFAR_SUFFIX = "-CIFAR"

# Which zoo model each compound-scaled zoo model was derived from (nars_facts.md: "A and F/G
# come from scaling B and E down/up"). Keys and values are zoo names.
FAMILY_BASES = {"FBNetV3-A": "FBNetV3-B", "FBNetV3-F": "FBNetV3-E", "FBNetV3-G": "FBNetV3-E"}
_FAMILY_BASES_NORM = {normalize_name(k): v for k, v in FAMILY_BASES.items()}


def stride2_blocks(spec: SpecLike) -> Tuple[Tuple[int, int], ...]:
    """(stage, row) of every stride-2 block, in forward order (the stem first)."""
    spec = load_spec(spec)
    return tuple((si, ri) for si, ri, k, row in spec.blocks() if k == 0 and row.stride == 2)


def unstrided_block(spec: SpecLike, which: int = 2) -> Tuple[int, int]:
    """(stage, row) of the ``which``-th (1-based) stride-2 block, the one the CIFAR variant
    sets to stride 1. ``which=2``: the paper's "second stride-2 block"."""
    spec = load_spec(spec)
    if isinstance(which, bool) or not isinstance(which, int) or which < 1:
        raise SpecError(f"which: {which!r} is not a positive integer (1 = the first stride-2 block)")
    found = stride2_blocks(spec)
    if len(found) < which:
        raise SpecError(f"{spec.name}: has {len(found)} stride-2 block(s), so there is no stride-2 block "
                        f"number {which} to set to stride 1")
    return found[which - 1]


def family_base(spec: SpecLike) -> ArchSpec:
    """The spec this one was compound-scaled from (itself unless it is a scaled zoo model)."""
    spec = load_spec(spec)
    base_name = _FAMILY_BASES_NORM.get(normalize_name(spec.name))
    return load_spec(base_name) if base_name else spec


def cifar_resolution(spec: SpecLike, base: Optional[SpecLike] = None,
                     base_resolution: int = CIFAR_BASE_RESOLUTION, multiple: int = 1) -> int:
    """Input size of ``spec``'s CIFAR variant (rule in the module docstring).

    ``base``: the spec (or its input size, an int) that ``spec`` was scaled from; default
    ``family_base(spec)``.
    """
    spec = load_spec(spec)
    for field_name, value in (("base_resolution", base_resolution), ("multiple", multiple)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(f"{field_name}: {value!r} is not a positive integer")
    if base is None:
        base_size = family_base(spec).input_size
    elif isinstance(base, int) and not isinstance(base, bool):
        if base < 1:
            raise SpecError(f"base: {base!r} is not a positive input size")
        base_size = base
    else:
        base_size = load_spec(base).input_size
    ratio = spec.input_size / base_size
    scaled = int(round(base_resolution * ratio / multiple)) * multiple
    return max(base_resolution, scaled)


def cifar_variant(spec_or_name: SpecLike, *, base: Optional[SpecLike] = None, resolution: Optional[int] = None,
                  base_resolution: int = CIFAR_BASE_RESOLUTION, which: int = 2, multiple: int = 1,
                  name: Optional[str] = None) -> ArchSpec:
    """The CIFAR-10 variant of a zoo name, arch YAML path, dict or ArchSpec.

    Sets the ``which``-th stride-2 block (default: the second, see the module docstring) to
    stride 1 and ``input_size`` to ``resolution`` (default: ``cifar_resolution(spec, base,
    base_resolution, multiple)``). Everything else, channels included, is kept. The name is
    ``name`` or ``"<name>-CIFAR"``. Build it with ``build_model(variant, num_classes=10)``.
    """
    spec = load_spec(spec_or_name)
    si, ri = unstrided_block(spec, which)
    row = spec.stages[si][ri]
    new_row = dataclasses.replace(row, stride=1, dw_padding=None)
    stage = spec.stages[si][:ri] + (new_row,) + spec.stages[si][ri + 1:]
    stages = spec.stages[:si] + (stage,) + spec.stages[si + 1:]
    if resolution is None:
        resolution = cifar_resolution(spec, base, base_resolution, multiple)
    elif isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8:
        raise SpecError(f"resolution: {resolution!r} is not an integer >= 8")
    return spec.replace(name=name or f"{spec.name}{CIFAR_SUFFIX}", stages=stages, input_size=resolution)


# The EfficientNet baselines and the results files moved to the experiment,
# fbnet_zoo.training.cifar10; these names still resolve here, with a DeprecationWarning.
_MOVED = ("EFFICIENTNET_RESOLUTIONS", "is_baseline", "unstride_module", "cifar_baseline", "RESULTS_NAME",
          "RESULTS_SCHEMA", "ResultsError", "find_results", "load_results", "results_table")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(f"fbnet_zoo.cifar.{name} moved to fbnet_zoo.training.cifar10.{name}", DeprecationWarning,
                      stacklevel=2)
        return getattr(importlib.import_module("fbnet_zoo.training.cifar10"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
