"""Search spaces, chosen by a config's ``space.kind`` (default ``fbnet``).

``make_space(cfg)`` builds the space a config names; ``register_space(kind, cls)`` adds one
(a ``Space`` subclass with a ``from_config(cfg)`` classmethod).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Type

from ..config import SearchConfigError
from .base import Dim, Space, parse_dim
from .fbnet import FBNetSpace, RowCostCache
from .nas_bench_201 import NASBench201Space

SPACES: Dict[str, Type[Space]] = {"fbnet": FBNetSpace, "nas_bench_201": NASBench201Space}


def register_space(kind: str, cls: Type[Space], overwrite: bool = False) -> None:
    if kind in SPACES and not overwrite:
        raise SearchConfigError(f"space kind {kind!r} is already registered")
    SPACES[kind] = cls


def space_kind(cfg: Mapping[str, Any]) -> str:
    space = cfg.get("space")
    kind = space.get("kind", "fbnet") if isinstance(space, Mapping) else "fbnet"
    if kind not in SPACES:
        raise SearchConfigError(f"space.kind: {kind!r} is not one of {sorted(SPACES)}")
    return kind


def make_space(cfg: Mapping[str, Any]) -> Space:
    """The space of a (validated or raw-but-merged) search config."""
    return SPACES[space_kind(cfg)].from_config(cfg)


__all__ = ["Dim", "FBNetSpace", "NASBench201Space", "RowCostCache", "SPACES", "Space", "make_space",
           "parse_dim", "register_space", "space_kind"]
