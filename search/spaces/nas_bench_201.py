"""The NAS-Bench-201 cell space (``space.kind: nas_bench_201``): 6 edges x 5 operations.

A cell is a DAG over 4 nodes (node 0 is the cell input, node 3 its output); node j sums one
operation on each edge i -> j (i < j). An architecture is written the benchmark's way::

    |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|

(``op~i`` is the edge from node i; ``+`` separates nodes 1, 2, 3). Operations: ``none`` (no
edge: contributes zeros), ``skip_connect``, ``nor_conv_1x1`` / ``nor_conv_3x3`` (ReLU-Conv-BN),
``avg_pool_3x3`` (stride 1, padding 1, padding not counted in the mean). An edge whose
result cannot reach the output (its target node has no non-``none`` way out) is not computed
and costs no FLOPs, but its parameters exist (see ``live_edges``).

The network is the benchmark's macro skeleton: a 3x3 conv stem (C channels) + BN; three
stages of N cells with C, 2C, 4C channels, a residual reduction block (stride 2) between
stages; BN-ReLU, global average pooling, a linear classifier; 32x32 inputs. ``CellNetwork``
builds it in PyTorch; each module's ``complexity`` staticmethod mirrors its ``__init__`` (the
pycls cost-twin idea, with the zoo's ``fbnet_zoo.blocks`` counters), so FLOPs and params of
a cell come without building it, equal to fvcore on the built network (tests pin it).

Space config::

    space: {kind: nas_bench_201, num_classes: 10, channels: 16, cells_per_stage: 5, input_size: 32}

(``num_classes`` defaults to the class count of ``bench.dataset``: 10 for cifar10, 100 for cifar100.)
"""

from __future__ import annotations

import functools
import operator
import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch
import yaml
from torch import nn

from fbnet_zoo.blocks import Cx, conv_cx, linear_cx, norm_cx, pool_cx
from fbnet_zoo.io_utils import atomic_write_text
from fbnet_zoo.spec import SpecError

from ..candidate import Candidate
from .base import Dim, Space, _fail

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NODES = 3
EDGES: Tuple[Tuple[int, int], ...] = tuple((j, i) for j in range(1, NODES + 1) for i in range(j))  # (to, from)
SPACE_KEYS = ("kind", "num_classes", "channels", "cells_per_stage", "input_size")
BENCHMARK_EPOCHS = 200
# classifier sizes of the benchmark's datasets: space.num_classes defaults to bench.dataset's
DATASET_CLASSES = {"cifar10": 10, "cifar10-valid": 10, "cifar100": 100, "ImageNet16-120": 120}


class CellArchError(SpecError):
    """A malformed NAS-Bench-201 architecture string (or op list)."""


def edge_name(j: int, i: int) -> str:
    return f"node{j}<-{i}"


def parse_arch(arch: str) -> Tuple[str, ...]:
    """The 6 operations of an arch string, in ``EDGES`` order."""
    if not isinstance(arch, str):
        raise CellArchError(f"arch: {arch!r} is not a string like '|nor_conv_3x3~0|+|...~0|...~1|+|...|'")
    nodes = arch.split("+")
    if len(nodes) != NODES:
        raise CellArchError(f"arch {arch!r}: has {len(nodes)} nodes separated by '+', the cell has {NODES}")
    ops: List[str] = []
    for j, node in enumerate(nodes, start=1):
        if not (node.startswith("|") and node.endswith("|")) or len(node) < 2:
            raise CellArchError(f"arch {arch!r}: node {j} {node!r} is not of the form '|op~i|...|'")
        items = node[1:-1].split("|")
        if len(items) != j:
            raise CellArchError(f"arch {arch!r}: node {j} has {len(items)} incoming edges, it needs {j}")
        for i, item in enumerate(items):
            op, sep, src = item.partition("~")
            if not sep or src != str(i):
                raise CellArchError(f"arch {arch!r}: node {j} edge {item!r} is not 'op~{i}'")
            if op not in OPS:
                raise CellArchError(f"arch {arch!r}: node {j} edge {item!r}: {op!r} is not one of {list(OPS)}")
            ops.append(op)
    return tuple(ops)


def format_arch(ops: Sequence[str]) -> str:
    """The benchmark's arch string of 6 operations in ``EDGES`` order."""
    if len(ops) != len(EDGES) or any(op not in OPS for op in ops):
        raise CellArchError(f"ops: {list(ops)!r} is not {len(EDGES)} operations of {list(OPS)}")
    it = iter(ops)
    return "+".join("|" + "|".join(f"{next(it)}~{i}" for i in range(j)) + "|" for j in range(1, NODES + 1))


def live_edges(ops: Sequence[str]) -> Tuple[bool, ...]:
    """Per edge (``EDGES`` order): does it feed the cell's output? An edge into a node that
    no non-'none' path leads out of computes nothing the network uses: the network skips it
    and it costs no FLOPs (as a traced graph, e.g. fvcore's, drops it), though its
    parameters exist like the benchmark's."""
    op = dict(zip(EDGES, ops))
    live_node = {NODES: True}
    for j in range(NODES - 1, 0, -1):
        live_node[j] = any(op[(k, j)] != "none" and live_node[k] for k in range(j + 1, NODES + 1))
    return tuple(o != "none" and live_node[j] for (j, _), o in zip(EDGES, ops))


# ---------------------------------------------------------------------------- the network
class ReLUConvBN(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, stride: int) -> None:
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False),
                                nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)

    @staticmethod
    def complexity(cx: Cx, c_out: int, k: int, stride: int) -> Cx:
        conv_cx(cx, c_out, k, stride, (k // 2, k // 2))
        return norm_cx(cx)


def edge_op(op: str, c: int) -> nn.Module:
    """One cell edge (stride 1, c -> c channels); ``none`` has no module."""
    if op == "skip_connect":
        return nn.Identity()
    if op == "nor_conv_1x1":
        return ReLUConvBN(c, c, 1, 1)
    if op == "nor_conv_3x3":
        return ReLUConvBN(c, c, 3, 1)
    if op == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise CellArchError(f"op: {op!r} is not an edge with a module (one of {list(OPS[1:])})")


def edge_op_complexity(cx: Cx, op: str) -> Cx:
    # identity and average pooling have no parameters and fvcore counts no FLOPs for them
    if op == "nor_conv_1x1":
        ReLUConvBN.complexity(cx, cx.c, 1, 1)
    elif op == "nor_conv_3x3":
        ReLUConvBN.complexity(cx, cx.c, 3, 1)
    return cx


class Cell(nn.Module):
    """Node j = sum over i < j of op(i -> j)(node i); the cell's output is node 3."""

    def __init__(self, ops: Sequence[str], c: int) -> None:
        super().__init__()
        self.ops = tuple(ops)
        self.edges = nn.ModuleDict({edge_name(j, i): edge_op(op, c) for (j, i), op in zip(EDGES, self.ops)
                                    if op != "none"})
        self.live = {edge_name(j, i) for (j, i), alive in zip(EDGES, live_edges(self.ops)) if alive}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for j in range(1, NODES + 1):
            terms = [self.edges[edge_name(j, i)](nodes[i]) for i in range(j) if edge_name(j, i) in self.live]
            # all-'none' (or unused) inputs: the benchmark's zero op, a node of zeros
            nodes.append(functools.reduce(operator.add, terms) if terms else torch.zeros_like(x))
        return nodes[-1]

    @staticmethod
    def complexity(cx: Cx, ops: Sequence[str]) -> Cx:
        for op, alive in zip(ops, live_edges(ops)):  # every edge maps the cell's input shape to itself
            e = edge_op_complexity(Cx(cx.h, cx.w, cx.c), op)
            if not alive:  # parameters only
                cx.params += e.params
                continue
            cx.flops += e.flops
            cx.params += e.params
        return cx


class ResidualReduction(nn.Module):
    """The benchmark's stage transition: ReLU-Conv3x3(stride 2)-BN, ReLU-Conv3x3-BN, plus a
    shortcut of 2x2 average pooling and a 1x1 conv."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_b(self.conv_a(x)) + self.shortcut(x)

    @staticmethod
    def complexity(cx: Cx, c_out: int) -> Cx:
        short = conv_cx(Cx(cx.h // 2, cx.w // 2, cx.c), c_out, 1, 1, (0, 0))
        ReLUConvBN.complexity(cx, c_out, 3, 2)
        ReLUConvBN.complexity(cx, c_out, 3, 1)
        cx.flops += short.flops
        cx.params += short.params
        return cx


class CellNetwork(nn.Module):
    """The NAS-Bench-201 macro skeleton around one cell architecture."""

    def __init__(self, arch: str, num_classes: int = 10, channels: int = 16, cells_per_stage: int = 5) -> None:
        super().__init__()
        self.arch = arch
        ops = parse_arch(arch)
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        layers: List[nn.Module] = []
        c = channels
        for stage in range(3):
            if stage:
                layers.append(ResidualReduction(c, 2 * c))
                c *= 2
            layers += [Cell(ops, c) for _ in range(cells_per_stage)]
        self.cells = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.cells(self.stem(x))))

    @staticmethod
    def complexity(ops: Sequence[str], num_classes: int = 10, channels: int = 16, cells_per_stage: int = 5,
                   input_size: int = 32) -> Cx:
        cx = Cx(input_size, input_size, 3)
        conv_cx(cx, channels, 3, 1, (1, 1))
        norm_cx(cx)
        for stage in range(3):
            if stage:
                ResidualReduction.complexity(cx, 2 * cx.c)
            for _ in range(cells_per_stage):
                Cell.complexity(cx, ops)
        norm_cx(cx)
        pool_cx(cx)
        return linear_cx(cx, num_classes)


# ---------------------------------------------------------------------------- the space
class NASBench201Space(Space):
    """6 choice dimensions (one per edge, ``EDGES`` order) of the 5 operations."""

    kind = "nas_bench_201"
    zoo_archs = False

    def __init__(self, space: Mapping[str, Any]) -> None:
        if not isinstance(space, Mapping):
            raise _fail("space", space, "is not a mapping")
        unknown = [k for k in space if k not in SPACE_KEYS]
        if unknown:
            raise _fail(f"space.{unknown[0]}", space[unknown[0]], f"is not a key of the nas_bench_201 space; "
                                                                   f"allowed: {list(SPACE_KEYS)}")
        self.raw = dict(space)
        self.num_classes = space.get("num_classes", 10)
        self.channels = space.get("channels", 16)
        self.cells_per_stage = space.get("cells_per_stage", 5)
        self.input_size = space.get("input_size", 32)
        for key in ("num_classes", "channels", "cells_per_stage", "input_size"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise _fail(f"space.{key}", v, "is not a positive integer")
        if self.input_size < 4:
            raise _fail("space.input_size", self.input_size, "is below 4 (two stride-2 reductions)")
        self.mode = "arch_only"
        self.dims = [Dim(edge_name(j, i), "choice", choices=OPS) for j, i in EDGES]
        self._init_coords()
        self._costs: Dict[Tuple[str, ...], Tuple[float, float]] = {}

    @classmethod
    def from_config(cls, cfg: Any) -> "NASBench201Space":
        """The space of a SearchConfig (``space``, ``mode``, ``bench.dataset``)."""
        if cfg.mode not in ("joint", "arch_only"):
            raise _fail("mode", cfg.mode, "is not searchable in the nas_bench_201 space (no recipe: "
                                                 "use joint or arch_only)")
        space = dict(cfg.space)
        if "num_classes" not in space:
            dataset = cfg.bench.dataset
            if dataset not in DATASET_CLASSES:
                raise _fail("space.num_classes", None, f"is needed: bench.dataset {dataset!r} is not one of "
                                                       f"{sorted(DATASET_CLASSES)} whose class count is known")
            space["num_classes"] = DATASET_CLASSES[dataset]
        return cls(space)

    # ------------------------------------------------------------------ arch strings
    def ops_of(self, values: Mapping[str, Any]) -> Tuple[str, ...]:
        return tuple(values[d.name] for d in self.dims)

    def arch_of(self, values: Mapping[str, Any]) -> str:
        return format_arch(self.ops_of(values))

    def values_of(self, arch: str) -> Dict[str, str]:
        return {d.name: op for d, op in zip(self.dims, parse_arch(arch))}

    def build_model(self, values_or_arch: Any) -> CellNetwork:
        arch = values_or_arch if isinstance(values_or_arch, str) else self.arch_of(values_or_arch)
        return CellNetwork(arch, self.num_classes, self.channels, self.cells_per_stage)

    # ------------------------------------------------------------------ the Space interface
    def cost(self, values: Mapping[str, Any]) -> Tuple[float, float]:
        ops = self.ops_of(values)
        hit = self._costs.get(ops)
        if hit is None:
            cx = CellNetwork.complexity(ops, self.num_classes, self.channels, self.cells_per_stage, self.input_size)
            hit = self._costs[ops] = (float(cx.flops), float(cx.params))
        return hit

    def candidate(self, key: str, values: Mapping[str, Any], name: str = "candidate") -> Candidate:
        return Candidate(key, self.arch_of(values))

    def min_resources(self) -> Dict[str, float]:
        # every operation adds non-negative cost, so the all-'none' cell is the smallest
        f, p = self.cost({d.name: "none" for d in self.dims})
        return {"flops": f, "params": p}

    @property
    def full_epochs(self) -> int:
        return BENCHMARK_EPOCHS

    def write_winner(self, values: Mapping[str, Any], name: str, out_dir: str) -> Dict[str, Any]:
        path = os.path.join(out_dir, "cells", f"{name}.yaml")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        f, p = self.cost(values)
        data = {"name": name, "space": self.kind, "arch": self.arch_of(values), "num_classes": self.num_classes,
                "channels": self.channels, "cells_per_stage": self.cells_per_stage, "flops": f, "params": p}
        atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
        return {"name": name, "arch_yaml": path, "recipe_yaml": None, "flops": f, "params": p,
                "arch": data["arch"]}

    def mutate(self, unit: np.ndarray, pm: float, rng: np.random.Generator, sigma: float = 0.2) -> np.ndarray:
        """Each edge changes to one of the other 4 operations with probability ``pm`` (at least
        one edge changes): operations have no order, so a Gaussian step would be meaningless."""
        n = len(OPS)
        idx = np.minimum((np.clip(unit, 0.0, 1.0) * n).astype(np.int64), n - 1)
        mask = rng.random(len(idx)) < pm
        if not mask.any():
            mask[rng.integers(len(idx))] = True
        shift = rng.integers(1, n, len(idx))
        idx = np.where(mask, (idx + shift) % n, idx)
        return (idx + 0.5) / n

    def describe(self) -> Dict[str, Any]:
        return {**super().describe(), "mode": self.mode, "channels": self.channels,
                "cells_per_stage": self.cells_per_stage, "input_size": self.input_size}


def all_archs() -> List[str]:
    """Every one of the 5^6 = 15,625 arch strings (ops in ``OPS`` order, last edge fastest)."""
    out = []
    for k in range(len(OPS) ** len(EDGES)):
        ops = []
        for _ in EDGES:
            k, r = divmod(k, len(OPS))
            ops.append(OPS[r])
        out.append(format_arch(ops[::-1]))
    return out

