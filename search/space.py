"""Compatibility name: the FBNet block space is ``fbnet_zoo.search.spaces.fbnet.FBNetSpace``;
``SearchSpace`` stays importable from here. Other spaces live in ``search/spaces/``."""

from .spaces.base import Dim, parse_dim
from .spaces.fbnet import FBNetSpace

SearchSpace = FBNetSpace

__all__ = ["Dim", "FBNetSpace", "SearchSpace", "parse_dim"]
