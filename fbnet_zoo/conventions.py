"""Counting conventions for FLOPs and parameters: the per-op rules the cost twins apply.

Two conventions differ only in what a few ops cost; the walk over the network is the same.

``fvcore`` (the default everywhere): fvcore's ``FlopCountAnalysis`` on the eval-mode model,
and every ``nn.Parameter``. A conv/linear costs one flop per multiply-add (bias not
counted), an affine BatchNorm 2 per element, adaptive average pooling 1 per input element,
nearest upsampling 1 per output element; activations, gates, adds and multiplies cost 0.

``paper``: the FBNetV3 authors' counter (mobile_cv.lut ``FlopsEstimation``), which gave the
paper's FLOPs (Table 4) and defined its search constraints. Only Conv2d, Linear and
AdaptiveAvgPool2d count: a conv/linear one flop per multiply-add, pooling 1 per input
element; BatchNorm, upsampling, activations, gates and adds cost 0, and so does any
functional op (it hooks modules: the pooling of a headless model's forward is invisible to
it). Parameters are the conv/linear weights only: no biases, no BatchNorm affines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

from .errors import UnknownConventionError, check_choice


@dataclass(frozen=True)
class CostRules:
    """What the ops whose cost depends on the convention are charged."""

    name: str
    norm_flops_per_element: int
    upsample_flops_per_element: int
    counts_norm_params: bool
    counts_bias_params: bool
    counts_functional_ops: bool


FVCORE = CostRules("fvcore", norm_flops_per_element=2, upsample_flops_per_element=1,
                   counts_norm_params=True, counts_bias_params=True, counts_functional_ops=True)
PAPER = CostRules("paper", norm_flops_per_element=0, upsample_flops_per_element=0,
                  counts_norm_params=False, counts_bias_params=False, counts_functional_ops=False)

CONVENTIONS: Dict[str, CostRules] = {r.name: r for r in (FVCORE, PAPER)}
DEFAULT_CONVENTION = FVCORE.name


def cost_rules(convention: str, path: str = "convention") -> CostRules:
    """The rules named ``convention``; ``path`` names the field in the error message."""
    return CONVENTIONS[check_choice(path, convention, sorted(CONVENTIONS), error=UnknownConventionError)]
