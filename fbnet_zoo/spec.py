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
import functools
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

from .errors import SpecError, check_bool, check_choice, check_int, check_name, check_number, show_value
from .io_utils import atomic_write_text, load_yaml

BLOCK_TYPES = ("conv", "ir", "ir_pool")
ACTIVATIONS = ("hswish", "relu", "swish", "identity")
SE_GATES = ("hsigmoid", "sigmoid")
SE_SOURCES = ("input", "expanded")
STRIDES = (1, 2)
UPSAMPLES = (1, 2)

# Sane bounds (documented in the README's spec section). They are far above anything the
# zoo, the search spaces or the detection heads use, and low enough that a spec inside them
# can be counted and built without hanging or exhausting memory.
MAX_INPUT_SIZE = 4096
MAX_IN_CHANNELS = 64
MAX_CHANNELS = 8192        # a row's out_channels
MAX_WIDTH = 32768          # any resolved width (expanded, SE, output) after rounding
MAX_REPEATS = 64
MAX_KERNEL = 15
MAX_EXPANSION = 16
MAX_DIVISOR = 256
MAX_STAGES = 32
MAX_ROWS = 32              # rows per stage
MAX_BLOCKS = 512           # blocks in a whole network (sum of repeats)

__all__ = [
    "ACTIVATIONS", "ArchSpec", "BLOCK_TYPES", "BlockSpec", "Feature", "ResolvedBlock", "SpecError",
    "check_input_size", "load_spec", "make_divisible", "min_input_size", "walk_rows",
]


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
    return SpecError(f"{path}: {show_value(value)} {allowed}")


def _padding(path: str, value: Any, kernel: int) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise _fail(path, value, "is not an integer or a [height, width] pair")
        return (check_int(f"{path}[0]", value[0], 0, kernel // 2), check_int(f"{path}[1]", value[1], 0, kernel // 2))
    pad = check_int(path, value, 0, kernel // 2)
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
    set_(b, "type", check_choice(f"{path}.type", b.type, BLOCK_TYPES))
    set_(b, "out_channels", check_int(f"{path}.out_channels", b.out_channels, 1, MAX_CHANNELS))
    set_(b, "repeats", check_int(f"{path}.repeats", b.repeats, 1, MAX_REPEATS))
    set_(b, "stride", check_choice(f"{path}.stride", b.stride, STRIDES))
    kernel = check_int(f"{path}.kernel", b.kernel, 1, MAX_KERNEL)
    if kernel % 2 == 0:
        raise _fail(f"{path}.kernel", kernel, "is not odd (kernels are centred: 1, 3, 5, 7, ...)")
    set_(b, "expansion", check_number(f"{path}.expansion", b.expansion, 0.0, MAX_EXPANSION))
    set_(b, "se", check_bool(f"{path}.se", b.se))
    set_(b, "act", check_choice(f"{path}.act", b.act, ACTIVATIONS))
    set_(b, "se_gate", check_choice(f"{path}.se_gate", b.se_gate, SE_GATES))
    set_(b, "se_from", check_choice(f"{path}.se_from", b.se_from, SE_SOURCES))
    set_(b, "se_ratio", check_number(f"{path}.se_ratio", b.se_ratio, 0.0, 1.0))
    set_(b, "dw_padding", _padding(f"{path}.dw_padding", b.dw_padding, kernel))
    set_(b, "dw_bn_act", check_bool(f"{path}.dw_bn_act", b.dw_bn_act))
    set_(b, "bias", check_bool(f"{path}.bias", b.bias))
    set_(b, "upsample", check_choice(f"{path}.upsample", b.upsample, UPSAMPLES))
    if b.type != "ir":
        for name in ("se", "dw_padding"):
            if getattr(b, name) not in (False, None):
                raise _fail(f"{path}.{name}", getattr(b, name), f"is only allowed on 'ir' rows, not '{b.type}'")
    if b.type != "conv" and b.bias:
        raise _fail(f"{path}.bias", b.bias, f"is only allowed on 'conv' rows, not '{b.type}'")
    if b.type == "ir_pool" and (b.repeats != 1 or b.stride != 1):
        raise _fail(f"{path}.repeats/stride", (b.repeats, b.stride), "must be (1, 1) for an 'ir_pool' row")


# --------------------------------------------------------------------------- the row walker
@dataclass(frozen=True)
class ResolvedBlock:
    """One block of a network with every number resolved: what the builder (blocks.py), the
    cost twins, the search pool and the detection heads take. Widths are plain ints, rounded
    once here (never again in a block).

    mid_channels: the depthwise / hidden width ("ir": the expanded width, or the input width
        at expansion 1; "ir_pool": the expanded width; "conv": the output width).
    se_channels: the squeeze-excite bottleneck (0 without SE).
    stride / padding / upsample: as applied to this block (only a row's first block takes
        the row's stride, dw_padding and upsample).
    residual: the block adds its input (an "ir" block whose output has the input's shape).
    """

    row: BlockSpec
    stage: int
    row_index: int
    repeat: int
    in_channels: int
    out_channels: int
    mid_channels: int
    se_channels: int
    stride: int
    padding: Optional[Tuple[int, int]]
    upsample: int
    residual: bool

    @property
    def type(self) -> str:
        return self.row.type

    @property
    def first(self) -> bool:
        return self.repeat == 0

    @property
    def expands(self) -> bool:
        """Has a 1x1 expansion conv ("ir_pool" always; "ir" unless expansion is 1)."""
        return self.row.type == "ir_pool" or (self.row.type == "ir" and self.row.expansion != 1)

    def output_size(self, h: int, w: int) -> Tuple[int, int]:
        """Height and width of this block's output for an h x w input (below 1: no pixels left):
        the upsampling, then the k x k conv ("conv": padding k // 2; "ir": the depthwise conv's
        padding); "ir_pool" pools to 1 x 1."""
        h, w = h * self.upsample, w * self.upsample
        if self.type == "ir_pool":
            return (1, 1) if h >= 1 and w >= 1 else (h, w)
        k = self.row.kernel
        ph, pw = self.padding if self.padding is not None else (k // 2, k // 2)
        return (h + 2 * ph - k) // self.stride + 1, (w + 2 * pw - k) // self.stride + 1


def _resolve(row: BlockSpec, stage: int, row_index: int, repeat: int, c_in: int, divisor: int) -> ResolvedBlock:
    first = repeat == 0
    c_out = make_divisible(row.out_channels, divisor)
    stride = row.stride if first else 1
    padding = row.dw_padding if first else None
    upsample = row.upsample if first else 1
    mid, se, residual = c_out, 0, False
    if row.type in ("ir", "ir_pool"):
        mid = make_divisible(c_in * row.expansion, divisor)
    if row.type == "ir":
        if row.expansion == 1:
            mid = c_in
        if row.se:
            se = make_divisible((c_in if row.se_from == "input" else mid) * row.se_ratio, divisor)
        # A residual needs the input's shape: stride 1, same channels, a size-preserving
        # depthwise padding and no upsampling in front.
        keeps_size = padding is None or padding == (row.kernel // 2, row.kernel // 2)
        residual = stride == 1 and c_in == c_out and keeps_size and upsample == 1
    return ResolvedBlock(row, stage, row_index, repeat, c_in, c_out, mid, se, stride, padding, upsample, residual)


def walk_rows(rows: Iterable[BlockSpec], in_channels: int, divisor: int, stage: int = 0) -> Iterator[ResolvedBlock]:
    """Every block of ``rows`` (rows -> repeats), in order, resolved for ``in_channels`` input
    channels and width ``divisor``. The one walk the model, the complexity counter, the search
    pool and the detection heads share."""
    c = in_channels
    for ri, row in enumerate(rows):
        for k in range(row.repeats):
            block = _resolve(row, stage, ri, k, c, divisor)
            c = block.out_channels
            yield block


@dataclass(frozen=True)
class Feature:
    """A spatial output of a network: ``res{k}`` is the output of the last block (outside the
    pooled head) at cumulative stride 2**k. ``stage`` / ``block``: where it is taken (the
    stage index and the block's index inside that stage)."""

    name: str
    stride: int
    channels: int
    stage: int
    block: int

    def as_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "channels": self.channels, "stride": self.stride, "stage": self.stage}


@dataclass(frozen=True)
class ArchSpec:
    """A whole network: stages of block rows, the classifier's dropout and the native input size.

    stages[0] is usually the stem (a "conv" row); the last stage may be a single "ir_pool"
    row (the pooled head). ``walk()`` gives every block with its widths resolved;
    ``features()`` the spatial outputs ``res{k}`` by stride.
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
        for b in self.walk():
            yield b.stage, b.row_index, b.repeat, b.row

    def walk(self) -> Tuple[ResolvedBlock, ...]:
        """Every block, stage by stage, with stride and widths resolved (computed once per spec)."""
        return _walk_arch(self)

    def stage_strides(self) -> Dict[str, int]:
        """Cumulative stride of each feature stage's output, by stage name ``stage{i}``."""
        out, stride = {}, 1
        for si in self.feature_stages:
            for row in self.stages[si]:
                stride = stride * row.stride // row.upsample
            out[f"stage{si}"] = stride
        return out

    def stage_channels(self) -> Dict[str, int]:
        return {f"stage{si}": self.channels(self.stages[si][-1].out_channels) for si in self.feature_stages}

    def features(self) -> Tuple[Feature, ...]:
        """One ``res{k}`` per cumulative stride 2**k: the output of the last block at that
        stride (pooled head excluded), by increasing stride."""
        last: Dict[int, ResolvedBlock] = {}
        stride = 1
        for b in self.walk():
            if b.type == "ir_pool":
                break
            stride = stride * b.stride // b.upsample
            last[stride] = b
        out = []
        for stride, b in sorted(last.items()):
            k = stride.bit_length() - 1
            if 2 ** k == stride:
                index = sum(row.repeats for row in self.stages[b.stage][:b.row_index]) + b.repeat
                out.append(Feature(f"res{k}", stride, b.out_channels, b.stage, index))
        return tuple(out)

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
        """Load from a YAML file path (local path or URL via iopath) or YAML text. Duplicate
        keys are refused; errors name the file."""
        text, source = _read_text(path_or_text)
        data = load_yaml(text, source, SpecError)
        if not isinstance(data, Mapping):
            raise SpecError(f"{source}: expected a mapping with 'name', 'input_size' and 'stages', "
                            f"got {type(data).__name__}")
        default_name = os.path.splitext(os.path.basename(str(path_or_text)))[0] if source != "<yaml text>" else None
        try:
            return _arch_from_dict(data, default_name)
        except SpecError as e:
            if source == "<yaml text>":
                raise
            raise SpecError(f"{source}: {e}") from None

    def save_yaml(self, path: Union[str, os.PathLike]) -> None:
        atomic_write_text(path, self.to_yaml())


_ARCH_FIELDS = ("name", "input_size", "stages", "width_divisor", "dropout", "in_channels")


@functools.lru_cache(maxsize=4096)
def _walk_arch(spec: ArchSpec) -> Tuple[ResolvedBlock, ...]:
    out, c = [], spec.in_channels
    for si, stage in enumerate(spec.stages):
        for b in walk_rows(stage, c, spec.width_divisor, si):
            out.append(b)
            c = b.out_channels
    return tuple(out)


def _block_without_pixels(spec: "ArchSpec", h: int, w: int) -> Optional[Tuple["ResolvedBlock", int, int]]:
    """The first block of ``spec`` an h x w input leaves no pixels (with the size it gets), or None."""
    for b in spec.walk():
        out_h, out_w = b.output_size(h, w)
        if out_h < 1 or out_w < 1:
            return b, h, w
        h, w = out_h, out_w
    return None


def check_input_size(spec: "ArchSpec", size: Union[int, Tuple[int, int]], path: str = "input_size") -> None:
    """Raise SpecError when an input of ``size`` (an int or (h, w)) runs out of pixels inside
    ``spec`` (a stride-2 or unpadded conv on a map smaller than its kernel): the message names
    the block and the smallest square input the arch takes."""
    empty = _block_without_pixels(spec, *((size, size) if isinstance(size, int) else size))
    if empty is not None:
        b, h, w = empty
        k = b.row.kernel
        pad = b.padding[0] if b.padding is not None else k // 2
        raise SpecError(f"{path}: {size} is too small for {spec.name}: stages[{b.stage}][{b.row_index}] (kernel "
                        f"{k}, stride {b.stride}, padding {pad}) gets {h}x{w} pixels and leaves none; the smallest "
                        f"input this arch takes is {min_input_size(spec)}")


def min_input_size(spec: "ArchSpec") -> int:
    """The smallest square input size every block of ``spec`` has pixels for (at least 8, the
    smallest ``input_size`` a spec may have)."""
    def fits(n: int) -> bool:
        return _block_without_pixels(spec, n, n) is None

    lo, hi = 8, MAX_INPUT_SIZE  # each block's output grows with its input: bisect
    if not fits(hi):
        return hi + 1
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
    return lo


def _validate_arch(a: ArchSpec) -> None:
    set_ = object.__setattr__
    set_(a, "name", check_name("name", a.name))
    set_(a, "input_size", check_int("input_size", a.input_size, 8, MAX_INPUT_SIZE))
    set_(a, "width_divisor", check_int("width_divisor", a.width_divisor, 1, MAX_DIVISOR))
    set_(a, "dropout", check_number("dropout", a.dropout, 0.0, 1.0, lo_open=False, hi_open=True))
    set_(a, "in_channels", check_int("in_channels", a.in_channels, 1, MAX_IN_CHANNELS))
    stages = _sequence("stages", a.stages, "stages", MAX_STAGES)
    n_blocks = 0
    for si, stage in enumerate(stages):
        rows = _sequence(f"stages[{si}]", stage, "block rows", MAX_ROWS)
        for ri, row in enumerate(rows):
            if not isinstance(row, BlockSpec):
                raise _fail(f"stages[{si}][{ri}]", row, "is not a BlockSpec")
            if row.type == "ir_pool" and (si != len(stages) - 1 or ri != len(rows) - 1):
                raise _fail(f"stages[{si}][{ri}].type", row.type, "is only allowed as the very last row (the pooled head)")
            n_blocks += row.repeats
    if n_blocks > MAX_BLOCKS:
        raise SpecError(f"stages: {n_blocks} blocks in all (sum of repeats) is above the maximum {MAX_BLOCKS}")
    if stages[0][0].type == "ir_pool":
        raise _fail("stages[0][0].type", "ir_pool", "cannot start a network")
    set_(a, "stages", tuple(tuple(stage) for stage in stages))
    for b in _walk_arch(a):
        for what in ("mid_channels", "se_channels", "out_channels"):
            if getattr(b, what) > MAX_WIDTH:
                raise SpecError(f"stages[{b.stage}][{b.row_index}]: resolved {what} {getattr(b, what)} is above "
                                f"the maximum width {MAX_WIDTH} (out_channels x expansion too large)")
    # a spec must run at its own input size (else build_model passes and the first forward fails in a conv)
    check_input_size(a, a.input_size)


def _sequence(path: str, value: Any, what: str, limit: int) -> Sequence[Any]:
    if not isinstance(value, (list, tuple)) or not value:
        raise _fail(path, value, f"is not a non-empty list of {what}")
    if len(value) > limit:
        raise SpecError(f"{path}: {len(value)} {what} is above the maximum {limit}")
    return value


def _block_from_dict(data: Any, path: str) -> BlockSpec:
    if not isinstance(data, Mapping):
        raise _fail(path, data, "is not a mapping of block fields")
    unknown = [k for k in data if k not in _BLOCK_FIELDS]
    if unknown:
        raise SpecError(f"{path}: unknown key {str(unknown[0])[:60]!r}; allowed: {list(_BLOCK_FIELDS)}")
    for key in _BLOCK_REQUIRED:
        if key not in data:
            raise SpecError(f"{path}.{key}: missing (required: {list(_BLOCK_REQUIRED)})")
    block = BlockSpec.__new__(BlockSpec)
    for f in dataclasses.fields(BlockSpec):
        object.__setattr__(block, f.name, data.get(f.name, f.default))
    _validate_block(block, path)
    return block


def _arch_from_dict(data: Mapping[str, Any], name: Optional[str] = None) -> ArchSpec:
    if not isinstance(data, Mapping):
        raise _fail("<spec>", data, "is not a mapping")
    unknown = [k for k in data if k not in _ARCH_FIELDS]
    if unknown:
        raise SpecError(f"{str(unknown[0])[:60]}: unknown key; allowed: {list(_ARCH_FIELDS)}")
    data = dict(data)
    if name is not None:
        data.setdefault("name", name)
    for key in ("name", "input_size", "stages"):
        if key not in data:
            raise SpecError(f"{key}: missing (required: ['name', 'input_size', 'stages'])")
    raw_stages = _sequence("stages", data["stages"], "stages", MAX_STAGES)
    stages = []
    for si, stage in enumerate(raw_stages):
        rows = _sequence(f"stages[{si}]", stage, "block rows", MAX_ROWS)
        stages.append(tuple(_block_from_dict(row, f"stages[{si}][{ri}]") for ri, row in enumerate(rows)))
    data["stages"] = tuple(stages)
    return ArchSpec(**data)


def names_a_file(s: str) -> bool:
    """A string that names a YAML file or URL rather than a zoo name (or YAML text)."""
    return "\n" not in s and (s.endswith((".yaml", ".yml")) or "://" in s or os.sep in s)


def _read_text(path_or_text: Union[str, os.PathLike]) -> Tuple[str, str]:
    s = os.fspath(path_or_text)
    if not (names_a_file(s) or ("\n" not in s and os.path.exists(s))):
        return s, "<yaml text>"
    from iopath.common.file_io import g_pathmgr

    try:
        with g_pathmgr.open(s, "r", encoding="utf-8") as f:
            return f.read(), s
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
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
    """An ArchSpec from a spec, a dict or a YAML path/URL. Zoo names are the registry's job:
    ``fbnet_zoo.load_spec`` / ``fbnet_zoo.registry.load_spec`` resolve a name, then call this."""
    if isinstance(source, ArchSpec):
        return source
    if isinstance(source, Mapping):
        return ArchSpec.from_dict(source)
    if isinstance(source, (str, os.PathLike)):
        s = os.fspath(source)
        if names_a_file(s) or os.path.isfile(s):
            return ArchSpec.from_yaml(s)
        raise SpecError(f"<spec>: {s!r} is not a YAML path; a zoo name is resolved by fbnet_zoo.get_spec / "
                        "fbnet_zoo.load_spec / fbnet_zoo.build_model")
    raise SpecError(f"<spec>: {type(source).__name__} is not an ArchSpec, dict, YAML path or zoo name")
