"""Architecture specs: the one representation of an FBNet architecture.

An ``ArchSpec`` is a list of stages, each a list of ``BlockSpec`` rows. A row stands for
``repeats`` blocks of one kind; only the first of them uses ``stride`` (and ``dw_padding``).
The same spec drives the builder (model.py), the analytic counter (complexity.py), the
search and the detection adapters. Specs are frozen and validated on construction; every
problem raises ``SpecError`` naming the field path, the bad value and what is allowed.

YAML/dict form (the same as ../shared/reference/fbnetv3_archs.json)::

    name: FBNetV3-A
    input_size: 224
    width_divisor: 8
    stages:
      - - {type: conv, out_channels: 16, stride: 2, kernel: 3, bias: true}
      - - {type: ir, out_channels: 16, repeats: 2, kernel: 3, expansion: 1}
      ...
      - - {type: ir_pool, out_channels: 1984, expansion: 6}
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple, Union

BLOCK_TYPES = ("conv", "ir", "ir_pool")
ACTIVATIONS = ("hswish", "relu", "swish", "identity")
SE_GATES = ("hsigmoid", "sigmoid")
SE_SOURCES = ("input", "expanded")
STRIDES = (1, 2)
UPSAMPLES = (1, 2)


class SpecError(ValueError):
    """An invalid architecture spec. The message names the field path and the bad value."""


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.95) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``).

    If rounding down loses more than ``1 - round_limit`` of the value, round up instead.
    0.95 is what the reference implementation uses: it reproduces FBNetV3-A...G's
    parameter counts exactly (0.9, the MobileNet habit, is off by 8,328 on FBNetV3-G).
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


# --------------------------------------------------------------------------- checks
def _fail(path: str, value: Any, allowed: str) -> SpecError:
    return SpecError(f"{path}: {value!r} {allowed}")


def _int(path: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, value, f"is not an integer (>= {minimum})")
    if value < minimum:
        raise _fail(path, value, f"is below the minimum {minimum}")
    return value


def _number(path: str, value: Any, low: float, high: float = math.inf, low_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(path, value, "is not a finite number")
    if (value <= low if low_open else value < low) or value > high:
        bracket = "(" if low_open else "["
        raise _fail(path, value, f"is outside {bracket}{low}, {high}]")
    return int(value) if float(value).is_integer() else float(value)


def _bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, value, "is not a boolean (true/false)")
    return value


def _choice(path: str, value: Any, choices: Tuple[Any, ...]) -> Any:
    if isinstance(value, bool) or value not in choices:
        raise _fail(path, value, f"is not one of {list(choices)}")
    return value


def _padding(path: str, value: Any) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise _fail(path, value, "is not an integer or a [height, width] pair")
        return (_int(f"{path}[0]", value[0], 0), _int(f"{path}[1]", value[1], 0))
    pad = _int(path, value, 0)
    return (pad, pad)


# --------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class BlockSpec:
    """One row of a stage: ``repeats`` blocks of the same kind.

    type: "conv" (conv-BN-act), "ir" (inverted residual), "ir_pool" (the pooled last stage:
        1x1 expand conv-BN-act, global average pool, 1x1 conv to out_channels + act, no BN).
    expansion: multiplies the block's input channels to give its hidden width ("ir", "ir_pool").
    se / se_gate / se_from / se_ratio: squeeze-excite after the depthwise conv. Its bottleneck
        is make_divisible(se_ratio * (input channels | expanded channels)).
    dw_padding: overrides the depthwise padding of the row's first block (reference archs).
    dw_bn_act: False drops BN and activation after the depthwise conv (d2go detection archs).
    bias: conv bias ("conv" rows only; the reference stem has one).
    upsample: nearest-neighbour upsampling before the row's first block (mask heads).
    """

    type: str
    out_channels: int
    repeats: int = 1
    stride: int = 1
    kernel: int = 3
    expansion: float = 1
    se: bool = False
    act: str = "hswish"
    se_gate: str = "hsigmoid"
    se_from: str = "input"
    se_ratio: float = 0.25
    dw_padding: Optional[Tuple[int, int]] = None
    dw_bn_act: bool = True
    bias: bool = False
    upsample: int = 1

    def __post_init__(self) -> None:
        _validate_block(self, "block")

    def to_dict(self) -> Dict[str, Any]:
        """The fields a reader of an arch table expects, plus every other non-default field."""
        out: Dict[str, Any] = {"type": self.type, "out_channels": self.out_channels,
                               "repeats": self.repeats, "stride": self.stride}
        if self.type != "ir_pool":
            out["kernel"] = self.kernel
        if self.type != "conv":
            out["expansion"] = self.expansion
        if self.type == "ir":
            out["se"] = self.se
        out["act"] = self.act
        for f in dataclasses.fields(self):
            if f.name in out:
                continue
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


_BLOCK_FIELDS = tuple(f.name for f in dataclasses.fields(BlockSpec))
_BLOCK_REQUIRED = ("type", "out_channels")


def _validate_block(b: BlockSpec, path: str) -> None:
    set_ = object.__setattr__  # normalise values on a frozen dataclass
    set_(b, "type", _choice(f"{path}.type", b.type, BLOCK_TYPES))
    set_(b, "out_channels", _int(f"{path}.out_channels", b.out_channels))
    set_(b, "repeats", _int(f"{path}.repeats", b.repeats))
    set_(b, "stride", _choice(f"{path}.stride", b.stride, STRIDES))
    kernel = _int(f"{path}.kernel", b.kernel)
    if kernel % 2 == 0:
        raise _fail(f"{path}.kernel", kernel, "is not odd (kernels are centred: 1, 3, 5, 7, ...)")
    set_(b, "expansion", _number(f"{path}.expansion", b.expansion, 0.0))
    set_(b, "se", _bool(f"{path}.se", b.se))
    set_(b, "act", _choice(f"{path}.act", b.act, ACTIVATIONS))
    set_(b, "se_gate", _choice(f"{path}.se_gate", b.se_gate, SE_GATES))
    set_(b, "se_from", _choice(f"{path}.se_from", b.se_from, SE_SOURCES))
    set_(b, "se_ratio", _number(f"{path}.se_ratio", b.se_ratio, 0.0, 1.0))
    set_(b, "dw_padding", _padding(f"{path}.dw_padding", b.dw_padding))
    set_(b, "dw_bn_act", _bool(f"{path}.dw_bn_act", b.dw_bn_act))
    set_(b, "bias", _bool(f"{path}.bias", b.bias))
    set_(b, "upsample", _choice(f"{path}.upsample", b.upsample, UPSAMPLES))
    if b.type != "ir":
        for name in ("se", "dw_padding"):
            if getattr(b, name) not in (False, None):
                raise _fail(f"{path}.{name}", getattr(b, name), f"is only allowed on 'ir' rows, not '{b.type}'")
    if b.type != "conv" and b.bias:
        raise _fail(f"{path}.bias", b.bias, f"is only allowed on 'conv' rows, not '{b.type}'")
    if b.type == "ir_pool" and (b.repeats != 1 or b.stride != 1):
        raise _fail(f"{path}.repeats/stride", (b.repeats, b.stride), "must be (1, 1) for an 'ir_pool' row")


@dataclass(frozen=True)
class ArchSpec:
    """A whole network: stages of block rows, the classifier's dropout and the native input size.

    stages[0] is usually the stem (a "conv" row); the last stage may be a single "ir_pool"
    row (the pooled head). Stage i is exposed by the model as feature "stage{i}".
    """

    name: str
    input_size: int
    stages: Tuple[Tuple[BlockSpec, ...], ...]
    width_divisor: int = 8
    dropout: float = 0.2
    in_channels: int = 3

    def __post_init__(self) -> None:
        _validate_arch(self)

    # ---- derived facts
    @property
    def has_pool_head(self) -> bool:
        return self.stages[-1][-1].type == "ir_pool"

    @property
    def feature_stages(self) -> Tuple[int, ...]:
        """Indices of the stages with a spatial output (all but the pooled head)."""
        n = len(self.stages) - (1 if self.has_pool_head else 0)
        return tuple(range(n))

    def channels(self, value: float) -> int:
        return make_divisible(value, self.width_divisor)

    def blocks(self) -> Iterator[Tuple[int, int, int, BlockSpec]]:
        """(stage index, row index, repeat index, row) for every block, in order."""
        for si, stage in enumerate(self.stages):
            for ri, row in enumerate(stage):
                for k in range(row.repeats):
                    yield si, ri, k, row

    def stage_strides(self) -> Dict[str, int]:
        """Cumulative stride of each feature stage's output, by feature name."""
        out, stride = {}, 1
        for si in self.feature_stages:
            for row in self.stages[si]:
                stride = stride * row.stride // row.upsample
            out[f"stage{si}"] = stride
        return out

    def stage_channels(self) -> Dict[str, int]:
        return {f"stage{si}": self.channels(self.stages[si][-1].out_channels) for si in self.feature_stages}

    def replace(self, **changes: Any) -> "ArchSpec":
        return dataclasses.replace(self, **changes)

    # ---- dict / YAML
    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "input_size": self.input_size,
                               "width_divisor": self.width_divisor, "dropout": self.dropout}
        if self.in_channels != 3:
            out["in_channels"] = self.in_channels
        out["stages"] = [[row.to_dict() for row in stage] for stage in self.stages]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: Optional[str] = None) -> "ArchSpec":
        return _arch_from_dict(data, name)

    def to_yaml(self) -> str:
        return _dump_yaml(self.to_dict())

    @classmethod
    def from_yaml(cls, path_or_text: Union[str, os.PathLike]) -> "ArchSpec":
        """Load from a YAML file path (local path or URL via iopath) or YAML text."""
        import yaml

        text, source = _read_text(path_or_text)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SpecError(f"{source}: not valid YAML ({e})") from None
        if not isinstance(data, Mapping):
            raise SpecError(f"{source}: expected a mapping with 'name', 'input_size' and 'stages', got {type(data).__name__}")
        default_name = os.path.splitext(os.path.basename(str(path_or_text)))[0] if source != "<yaml text>" else None
        return _arch_from_dict(data, default_name)

    def save_yaml(self, path: Union[str, os.PathLike]) -> None:
        from .io_utils import atomic_write_text

        atomic_write_text(path, self.to_yaml())


_ARCH_FIELDS = ("name", "input_size", "stages", "width_divisor", "dropout", "in_channels")


def _validate_arch(a: ArchSpec) -> None:
    set_ = object.__setattr__
    if not isinstance(a.name, str) or not a.name.strip():
        raise _fail("name", a.name, "is not a non-empty string")
    set_(a, "input_size", _int("input_size", a.input_size, 8))
    set_(a, "width_divisor", _int("width_divisor", a.width_divisor))
    set_(a, "dropout", _number("dropout", a.dropout, 0.0, 1.0, low_open=False))
    if a.dropout >= 1:
        raise _fail("dropout", a.dropout, "is outside [0, 1)")
    set_(a, "in_channels", _int("in_channels", a.in_channels))
    if not isinstance(a.stages, (list, tuple)) or not a.stages:
        raise _fail("stages", a.stages, "is not a non-empty list of stages")
    stages = []
    for si, stage in enumerate(a.stages):
        if not isinstance(stage, (list, tuple)) or not stage:
            raise _fail(f"stages[{si}]", stage, "is not a non-empty list of block rows")
        for ri, row in enumerate(stage):
            if not isinstance(row, BlockSpec):
                raise _fail(f"stages[{si}][{ri}]", row, "is not a BlockSpec")
            if row.type == "ir_pool" and (si != len(a.stages) - 1 or ri != len(stage) - 1):
                raise _fail(f"stages[{si}][{ri}].type", row.type, "is only allowed as the very last row (the pooled head)")
        stages.append(tuple(stage))
    if a.stages[0][0].type == "ir_pool":
        raise _fail("stages[0][0].type", "ir_pool", "cannot start a network")
    set_(a, "stages", tuple(stages))


def _block_from_dict(data: Any, path: str) -> BlockSpec:
    if not isinstance(data, Mapping):
        raise _fail(path, data, "is not a mapping of block fields")
    unknown = [k for k in data if k not in _BLOCK_FIELDS]
    if unknown:
        raise SpecError(f"{path}: unknown key {unknown[0]!r}; allowed: {list(_BLOCK_FIELDS)}")
    for key in _BLOCK_REQUIRED:
        if key not in data:
            raise SpecError(f"{path}.{key}: missing (required: {list(_BLOCK_REQUIRED)})")
    kwargs = dict(data)
    block = BlockSpec.__new__(BlockSpec)
    for f in dataclasses.fields(BlockSpec):
        object.__setattr__(block, f.name, kwargs.get(f.name, f.default))
    _validate_block(block, path)
    return block


def _arch_from_dict(data: Mapping[str, Any], name: Optional[str] = None) -> ArchSpec:
    if not isinstance(data, Mapping):
        raise _fail("<spec>", data, "is not a mapping")
    unknown = [k for k in data if k not in _ARCH_FIELDS]
    if unknown:
        raise SpecError(f"{unknown[0]}: unknown key; allowed: {list(_ARCH_FIELDS)}")
    data = dict(data)
    if name is not None:
        data.setdefault("name", name)
    for key in ("name", "input_size", "stages"):
        if key not in data:
            raise SpecError(f"{key}: missing (required: ['name', 'input_size', 'stages'])")
    raw_stages = data["stages"]
    if not isinstance(raw_stages, (list, tuple)) or not raw_stages:
        raise _fail("stages", raw_stages, "is not a non-empty list of stages")
    stages = []
    for si, stage in enumerate(raw_stages):
        if not isinstance(stage, (list, tuple)) or not stage:
            raise _fail(f"stages[{si}]", stage, "is not a non-empty list of block rows")
        stages.append(tuple(_block_from_dict(row, f"stages[{si}][{ri}]") for ri, row in enumerate(stage)))
    data["stages"] = tuple(stages)
    return ArchSpec(**data)


def _read_text(path_or_text: Union[str, os.PathLike]) -> Tuple[str, str]:
    s = os.fspath(path_or_text)
    looks_like_path = "\n" not in s and (s.endswith((".yaml", ".yml")) or "://" in s or os.path.exists(s))
    if not looks_like_path:
        return s, "<yaml text>"
    from iopath.common.file_io import g_pathmgr

    try:
        with g_pathmgr.open(s, "r") as f:
            return f.read(), s
    except (OSError, ValueError) as e:
        raise SpecError(f"{s}: cannot read arch file ({e})") from None


def _dump_yaml(data: Dict[str, Any]) -> str:
    """YAML with each block row on one line, as the zoo's arch files are written."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def represent_row(dumper: yaml.SafeDumper, row: "_FlowDict") -> Any:
        return dumper.represent_mapping("tag:yaml.org,2002:map", row.items(), flow_style=True)

    Dumper.add_representer(_FlowDict, represent_row)
    data = dict(data)
    data["stages"] = [[_FlowDict(row) for row in stage] for stage in data["stages"]]
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=120)


class _FlowDict(dict):
    pass


def load_spec(source: Union["ArchSpec", Mapping[str, Any], str, os.PathLike]) -> ArchSpec:
    """An ArchSpec from a spec, a dict, a YAML path/URL or a registered zoo name."""
    if isinstance(source, ArchSpec):
        return source
    if isinstance(source, Mapping):
        return ArchSpec.from_dict(source)
    if isinstance(source, (str, os.PathLike)):
        s = os.fspath(source)
        if s.endswith((".yaml", ".yml")) or "://" in s or os.sep in s:
            return ArchSpec.from_yaml(s)
        from .registry import get_spec

        return get_spec(s)
    raise SpecError(f"<spec>: {type(source).__name__} is not an ArchSpec, dict, YAML path or zoo name")
