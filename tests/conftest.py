import json
import os

import pytest
import torch

# One thread: on 2 shared cores, oversubscribed OpenMP threads spin and run 10x slower.
torch.set_num_threads(1)

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="session")
def reference_archs():
    """The reference block tables and counts (a copy of shared/reference/fbnetv3_archs.json)."""
    with open(os.path.join(DATA, "fbnetv3_archs.json")) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affines, so a wrong mapping or fold cannot hide behind identity BNs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
