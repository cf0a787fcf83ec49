"""Random valid ArchSpecs, for property tests and benchmarks (not the search space: that
is search/space.py). Mixes every block option the builder supports."""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from .spec import ACTIVATIONS, MAX_INPUT_SIZE, ArchSpec, BlockSpec, min_input_size


def random_spec(rng: np.random.Generator, name: str = "random", input_size: Optional[int] = None,
                max_stages: int = 6) -> ArchSpec:
    """A small-to-medium random network: conv stem, 2..max_stages IR stages, optional pooled head,
    at ``input_size`` (default: drawn in [64, 160]) or the smallest size it takes, if larger."""
    n_stages = int(rng.integers(2, max_stages + 1))
    stem_ch = int(rng.choice([8, 16, 24, 32]))
    stages: List[tuple] = [(BlockSpec("conv", stem_ch, stride=2, kernel=int(rng.choice([3, 5])),
                                      act=str(rng.choice(["hswish", "relu"])), bias=bool(rng.random() < 0.5)),)]
    channels = stem_ch
    for _ in range(n_stages):
        rows = []
        for r in range(int(rng.integers(1, 3))):
            channels = int(rng.integers(max(8, channels // 2), channels * 2 + 9))
            kernel = int(rng.choice([1, 3, 5, 7]))
            rows.append(BlockSpec(
                "ir", channels,
                repeats=int(rng.integers(1, 4)),
                stride=int(rng.choice([1, 2])) if r == 0 else 1,
                kernel=kernel,
                expansion=float(rng.choice([1, 2, 3, 4.5, 6])),
                se=bool(rng.random() < 0.4),
                act=str(rng.choice(ACTIVATIONS)),
                se_gate=str(rng.choice(["hsigmoid", "sigmoid"])),
                se_from=str(rng.choice(["input", "expanded"])),
                dw_padding=(int(rng.integers(0, kernel // 2 + 1)),) * 2 if rng.random() < 0.2 else None,
                dw_bn_act=bool(rng.random() < 0.85),
            ))
        stages.append(tuple(rows))
    if rng.random() < 0.7:
        stages.append((BlockSpec("ir_pool", int(rng.choice([256, 512, 1024])), expansion=float(rng.choice([4, 6]))),))
    size = input_size or int(rng.integers(64, 161))
    spec = ArchSpec(name, MAX_INPUT_SIZE, tuple(stages), width_divisor=int(rng.choice([4, 8])))
    return spec.replace(input_size=max(size, min_input_size(spec)))  # (too many strides for the size drawn)
