"""One builder: ArchSpec -> nn.Module with named stage outputs."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from .blocks import Classifier, NormLayer, build_block
from .spec import ArchSpec, SpecError, load_spec, make_divisible


def init_weights(module: nn.Module) -> None:
    """The zoo's initialisation: kaiming fan-out convs, BN 1/0, small-normal linear layers."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


class FBNet(nn.Module):
    """An FBNet network built from an ArchSpec.

    Stage i is ``self.stages[i]`` and its output is the feature ``"stage{i}"``;
    ``feature_info`` lists the spatial ones with their channels and strides (detection
    adapters pick from it). ``num_classes=0`` builds no classifier: ``forward`` then returns
    the pooled features.
    """

    def __init__(self, spec: Union[ArchSpec, Mapping[str, Any], str], num_classes: int = 1000,
                 dropout: Optional[float] = None, drop_path_rate: float = 0.0,
                 norm_layer: Optional[NormLayer] = None):
        super().__init__()
        spec = load_spec(spec)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise SpecError(f"num_classes: {num_classes!r} is not an integer >= 0")
        if not 0.0 <= drop_path_rate < 1.0:
            raise SpecError(f"drop_path_rate: {drop_path_rate!r} is outside [0, 1)")
        self.spec = spec
        norm_layer = norm_layer or nn.BatchNorm2d
        divisor = spec.width_divisor
        # Stochastic depth grows linearly with block depth over the residual-capable blocks.
        n_ir = sum(1 for _, _, _, row in spec.blocks() if row.type == "ir")
        ir_index = 0
        c = spec.in_channels
        stages = []
        for stage in spec.stages:
            blocks = []
            for row in stage:
                for k in range(row.repeats):
                    rate = drop_path_rate * ir_index / max(n_ir - 1, 1) if row.type == "ir" else 0.0
                    blocks.append(build_block(c, row, k == 0, divisor, norm_layer, rate))
                    c = make_divisible(row.out_channels, divisor)
                    ir_index += row.type == "ir"
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.num_features = c
        self.stage_names: List[str] = [f"stage{i}" for i in range(len(stages))]
        strides, channels = spec.stage_strides(), spec.stage_channels()
        self.feature_info: List[Dict[str, Any]] = [
            {"name": name, "channels": channels[name], "stride": strides[name]} for name in strides]
        self.feature_names: List[str] = [f["name"] for f in self.feature_info]
        self.num_classes = num_classes
        self.dropout_rate = spec.dropout if dropout is None else float(dropout)
        self.classifier = Classifier(c, num_classes, self.dropout_rate) if num_classes > 0 else None
        init_weights(self)

    def reset_classifier(self, num_classes: int, dropout: Optional[float] = None) -> None:
        """Replace the classifier (fresh weights) for another number of classes."""
        if dropout is not None:
            self.dropout_rate = float(dropout)
        self.num_classes = num_classes
        self.classifier = Classifier(self.num_features, num_classes, self.dropout_rate) if num_classes > 0 else None
        if self.classifier is not None:
            init_weights(self.classifier)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last stage (N x C x 1 x 1 when the spec ends with the pooled head)."""
        for stage in self.stages:
            x = stage(x)
        return x

    @torch.jit.export
    def forward_stages(self, x: torch.Tensor, names: Optional[List[str]] = None) -> Dict[str, torch.Tensor]:
        """Outputs of the named stages (default: every spatial stage); stops after the last one asked."""
        wanted = self.feature_names if names is None else names
        out: Dict[str, torch.Tensor] = {}
        for i, stage in enumerate(self.stages):
            if len(out) < len(wanted):  # TorchScript unrolls this loop: no `break`
                x = stage(x)
                name = self.stage_names[i]
                if name in wanted:
                    out[name] = x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        if self.classifier is None:
            return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)
