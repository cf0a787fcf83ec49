"""One builder: ArchSpec -> nn.Module with named feature outputs (``res{k}`` by stride)."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .blocks import Classifier, NormLayer, build_block
from .errors import SpecError, check_int, check_number
from .spec import ArchSpec, Feature, load_spec


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


def forward_to_features(stages: Sequence[nn.Module], x: torch.Tensor,
                        features: Sequence[Feature]) -> Dict[str, torch.Tensor]:
    """The staged forward: run ``stages`` (Sequentials of blocks, as ``FBNet.stages``) only as
    far as the deepest of ``features`` and return their outputs by name, in network order.
    The detection trunk runs its (possibly frozen) stage modules through this same function."""
    taps = {(f.stage, f.block): f.name for f in features}
    out: Dict[str, torch.Tensor] = OrderedDict()
    if not taps:
        return out
    last_stage, last_block = max(taps)
    for si in range(last_stage + 1):
        stage = stages[si]
        for bi, block in enumerate(stage):
            x = block(x)
            name = taps.get((si, bi))
            if name is not None:
                out[name] = x
            if si == last_stage and bi == last_block:
                break
    return out


class FBNet(nn.Module):
    """An FBNet network built from an ArchSpec (for a zoo name use ``fbnet_zoo.build_model``).

    Stage i is ``self.stages[i]``. ``feature_info`` lists the spatial outputs, one per stride:
    ``res{k}`` is the output of the last block at stride 2**k, with its channels, stride and
    the stage it ends in; ``forward_features(x, names)`` returns them. ``num_classes=0``
    builds no classifier: ``forward`` then returns the pooled features.
    """

    def __init__(self, spec: Union[ArchSpec, Mapping[str, Any], str], num_classes: int = 1000,
                 dropout: Optional[float] = None, drop_path_rate: float = 0.0,
                 norm_layer: Optional[NormLayer] = None):
        super().__init__()
        try:
            spec = load_spec(spec)
        except SpecError as e:
            raise SpecError(f"FBNet takes an ArchSpec (build a zoo model with fbnet_zoo.build_model(name) or "
                            f"FBNet(fbnet_zoo.get_spec(name))): {e}") from None
        num_classes = check_int("num_classes", num_classes, 0)
        drop_path_rate = float(check_number("drop_path_rate", drop_path_rate, 0.0, 1.0, lo_open=False, hi_open=True))
        if dropout is not None:  # the spec's own dropout is checked there; this override was torch's error
            dropout = float(check_number("dropout", dropout, 0.0, 1.0, lo_open=False, hi_open=True))
        self.spec = spec
        norm_layer = norm_layer or nn.BatchNorm2d
        walk = spec.walk()
        # Stochastic depth grows linearly with block depth over the residual-capable blocks.
        n_ir = sum(1 for b in walk if b.type == "ir")
        ir_index = 0
        stages: List[List[nn.Module]] = [[] for _ in spec.stages]
        for b in walk:
            rate = drop_path_rate * ir_index / max(n_ir - 1, 1) if b.type == "ir" else 0.0
            stages[b.stage].append(build_block(b, norm_layer, rate))
            ir_index += b.type == "ir"
        self.stages = nn.ModuleList(nn.Sequential(*blocks) for blocks in stages)
        c = walk[-1].out_channels
        self.num_features = c
        self.stage_names: List[str] = [f"stage{i}" for i in range(len(stages))]
        self._features = {f.name: f for f in spec.features()}
        self.feature_info: List[Dict[str, Any]] = [f.as_dict() for f in self._features.values()]
        self.feature_names: List[str] = list(self._features)
        self._stage_features: List[str] = [n for n in self.stage_names if n in spec.stage_strides()]
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

    def features(self, names: Optional[Sequence[str]] = None) -> List[Feature]:
        """The Feature descriptions of ``names`` (default: all), SpecError for an unknown name."""
        if names is None:
            return list(self._features.values())
        if isinstance(names, str):
            names = [names]
        unknown = [n for n in names if n not in self._features]
        if unknown:
            raise SpecError(f"names: {unknown[0]!r} is not a feature of {self.spec.name!r}; available: "
                            f"{self.feature_names} (strides {[f['stride'] for f in self.feature_info]})")
        return [self._features[n] for n in names]

    def forward_features(self, x: torch.Tensor, names: Optional[Sequence[str]] = None):
        """With ``names`` (e.g. ``["res3", "res4", "res5"]``): a dict of those features, running
        the network only as far as the deepest one. Without: the output of the last stage
        (N x C x 1 x 1 when the spec ends with the pooled head)."""
        if names is not None:
            return forward_to_features(self.stages, x, self.features(names))
        return self._trunk(x)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x

    @torch.jit.export
    def forward_stages(self, x: torch.Tensor, names: Optional[List[str]] = None) -> Dict[str, torch.Tensor]:
        """Deprecated: outputs of the named stages ``stage{i}`` (default: every spatial stage).
        Use ``forward_features(x, ["res3", ...])`` (features named by stride)."""
        if not torch.jit.is_scripting():
            warnings.warn("FBNet.forward_stages and the 'stage{i}' names are deprecated; use "
                          "forward_features(x, names) with the 'res{k}' names of feature_info",
                          DeprecationWarning, stacklevel=2)
        wanted = self._stage_features if names is None else names
        out: Dict[str, torch.Tensor] = {}
        for i, stage in enumerate(self.stages):
            if len(out) < len(wanted):  # TorchScript unrolls this loop: no `break`
                x = stage(x)
                name = self.stage_names[i]
                if name in wanted:
                    out[name] = x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._trunk(x)
        if self.classifier is None:
            return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)
