"""``build_model``: a zoo name, YAML path, dict or ArchSpec -> FBNet, optionally pretrained.

The top of the core's one-way map (timm's _registry / _factory / _builder split): the
registry resolves the name, model.py builds the module, checkpoints.py loads weights.
"""

from __future__ import annotations

from typing import Any, Mapping, Union

from .checkpoints import load_pretrained
from .model import FBNet
from .registry import load_spec
from .spec import ArchSpec

SPEC_OVERRIDES = ("input_size", "width_divisor", "in_channels", "name")
BUILDER_OPTIONS = ("dropout", "drop_path_rate", "norm_layer")


def build_model(name_or_spec: Union[ArchSpec, Mapping[str, Any], str], num_classes: int = 1000,
                pretrained: Union[bool, str] = False, **overrides: Any) -> FBNet:
    """Build a model from a zoo name, YAML path, dict or ArchSpec.

    overrides: builder options (``dropout``, ``drop_path_rate``, ``norm_layer``) and spec
    fields (``input_size``, ``width_divisor``, ``in_channels``). ``pretrained``: True (the
    model's default source), a source name, a local path or a URL (see checkpoints.py).
    """
    spec = load_spec(name_or_spec)
    spec_fields = {k: overrides.pop(k) for k in SPEC_OVERRIDES if k in overrides}
    if spec_fields:
        spec = spec.replace(**spec_fields)
    unknown = sorted(set(overrides) - set(BUILDER_OPTIONS))
    if unknown:
        raise TypeError(f"build_model: unknown option {unknown[0]!r}; allowed: "
                        f"{sorted(BUILDER_OPTIONS + SPEC_OVERRIDES)}")
    model = FBNet(spec, num_classes=num_classes, **overrides)
    if pretrained:
        load_pretrained(model, pretrained, name=spec.name)
    return model
