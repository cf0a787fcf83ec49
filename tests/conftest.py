import json
import os

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="session")
def reference_archs():
    """The reference block tables and counts (a copy of shared/reference/fbnetv3_archs.json)."""
    with open(os.path.join(DATA, "fbnetv3_archs.json")) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}
