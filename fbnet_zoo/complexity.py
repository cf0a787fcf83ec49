"""FLOPs and parameters of a spec, analytically, in fvcore's convention or the paper's.

``count_flops`` / ``count_params`` walk the spec through the blocks' cost twins
(blocks.py): no module is built and nothing is traced, so counting is ~thousands of times
faster than fvcore and the search can label a 20K pool in seconds. ``fvcore_flops`` is
the thin wrapper for any nn.Module (the ground truth the tests compare against).
``convention="paper"`` counts as the FBNetV3 authors' counter does (conventions.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Tuple, Union

from .blocks import Classifier, Cx, block_complexity, headless_pool_cx
from .conventions import DEFAULT_CONVENTION, cost_rules
from .errors import SpecError, check_int
from .registry import load_spec
from .spec import MAX_INPUT_SIZE, ArchSpec, check_input_size

SpecLike = Union[ArchSpec, Mapping[str, Any], str]
InputSize = Union[int, Tuple[int, int], None]


@dataclass
class Complexity:
    flops: int
    params: int
    input_size: Tuple[int, int]
    stages: Dict[str, Dict[str, int]] = field(default_factory=dict)  # per stage: flops, params, h, w, channels


def _hw(input_size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    """(h, w) of an int or (h, w) input size, each checked in [1, MAX_INPUT_SIZE]."""
    if isinstance(input_size, (tuple, list)) and len(input_size) == 2:
        h, w = input_size
    elif isinstance(input_size, int) and not isinstance(input_size, bool):
        h = w = input_size
    else:
        raise SpecError(f"input_size: {input_size!r} is not an integer or an (h, w) pair")
    return (check_int("input_size[0]", h, 1, MAX_INPUT_SIZE), check_int("input_size[1]", w, 1, MAX_INPUT_SIZE))


def complexity(spec: SpecLike, input_size: InputSize = None, num_classes: int = 1000,
               convention: str = DEFAULT_CONVENTION) -> Complexity:
    """FLOPs and params of the model ``FBNet(spec, num_classes)`` on one image (eval mode),
    with a per-stage breakdown. ``num_classes=0``: no classifier; the model's forward then
    pools the last feature map, and that pooling is counted as the convention counts it.
    ``convention``: "fvcore" or "paper" (conventions.py)."""
    spec = load_spec(spec)
    num_classes = check_int("num_classes", num_classes, 0)
    h, w = _hw(spec.input_size if input_size is None else input_size)
    check_input_size(spec, (h, w))
    cx = Cx(h, w, spec.in_channels, rules=cost_rules(convention))
    stages: Dict[str, Dict[str, int]] = {}
    start = (0, 0)
    walk = spec.walk()
    for i, b in enumerate(walk):
        if b.first and b.row_index == 0:
            start = (cx.flops, cx.params)
        block_complexity(cx, b)
        if i + 1 == len(walk) or walk[i + 1].stage != b.stage:
            stages[f"stage{b.stage}"] = {"flops": cx.flops - start[0], "params": cx.params - start[1],
                                         "h": cx.h, "w": cx.w, "channels": cx.c}
    if num_classes > 0:
        Classifier.complexity(cx, num_classes)
    else:
        headless_pool_cx(cx)
    return Complexity(cx.flops, cx.params, (h, w), stages)


def count_flops(spec: SpecLike, input_size: InputSize = None, num_classes: int = 1000,
                convention: str = DEFAULT_CONVENTION) -> int:
    """FLOPs (1 multiply-add = 1 flop) at ``input_size`` (default: the spec's), in fvcore's
    convention or, with ``convention="paper"``, the FBNetV3 authors'."""
    return complexity(spec, input_size, num_classes, convention).flops


def count_params(spec: SpecLike, num_classes: int = 1000, convention: str = DEFAULT_CONVENTION) -> int:
    """All parameters ("fvcore"), or the conv/linear weights only ("paper")."""
    spec = load_spec(spec)
    # Params do not depend on the input size; the smallest size every stride allows is cheapest.
    return complexity(spec, max(spec.input_size, 8), num_classes, convention).params


def fvcore_flops(model: Any, inputs: Any = None, input_size: InputSize = None) -> int:
    """fvcore's FlopCountAnalysis total for any module, in eval mode, warnings silenced.

    ``inputs``: a tensor or a tuple of tensors; or give ``input_size`` (int or (h, w)) for a
    1x3xHxW image (default: ``model.spec.input_size`` when the model has a spec).
    """
    import torch
    from fvcore.nn import FlopCountAnalysis

    if inputs is None:
        if input_size is None:
            spec = getattr(model, "spec", None)
            if spec is None:
                raise SpecError("fvcore_flops: give inputs or input_size for a model without a spec")
            input_size = spec.input_size
        h, w = _hw(input_size)
        in_ch = getattr(getattr(model, "spec", None), "in_channels", 3)
        inputs = (torch.zeros(1, in_ch, h, w),)
    elif not isinstance(inputs, tuple):
        inputs = (inputs,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(model, inputs)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            return int(analysis.total())
    finally:
        model.train(was_training)


def count_model_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
