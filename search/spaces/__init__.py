"""Search spaces, chosen by a config's ``space.kind`` (default ``fbnet``).

``make_space(cfg)`` builds the space a config names; ``register_space(kind, cls)`` adds one
(a ``Space`` subclass with a ``from_config(cfg)`` classmethod).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Type

from fbnet_zoo.errors import SearchConfigError

from .base import Dim, Space, parse_dim
from .fbnet import FBNetSpace, RowCostCache
from .nas_bench_201 import NASBench201Space

SPACES: Dict[str, Type[Space]] = {"fbnet": FBNetSpace, "nas_bench_201": NASBench201Space}


def register_space(kind: str, cls: Type[Space], overwrite: bool = False) -> None:
    if kind in SPACES and not overwrite:
        raise SearchConfigError(f"space kind {kind!r} is already registered")
    SPACES[kind] = cls


def space_kind(cfg: Any) -> str:
    """The ``space.kind`` of a SearchConfig (default ``fbnet``)."""
    kind = cfg.space.get("kind", "fbnet") if isinstance(cfg.space, Mapping) else "fbnet"
    if kind not in SPACES:
        raise SearchConfigError(f"space.kind: {kind!r} is not one of {sorted(SPACES)}")
    return kind


def make_space(cfg: Any) -> Space:
    """The space a SearchConfig names (its ``search_space`` calls this once)."""
    return SPACES[space_kind(cfg)].from_config(cfg)


__all__ = ["Dim", "FBNetSpace", "NASBench201Space", "RowCostCache", "SPACES", "Space", "make_space",
           "parse_dim", "register_space", "space_kind"]
