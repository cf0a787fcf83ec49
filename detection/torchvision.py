"""Deprecated alias of ``fbnet_zoo.detection.tv`` (renamed so that no module of ours is named
like the library it wraps); will be removed."""

import warnings

from .tv import *  # noqa: F401,F403
from .tv import __all__  # noqa: F401

warnings.warn("fbnet_zoo.detection.torchvision is renamed fbnet_zoo.detection.tv", DeprecationWarning, stacklevel=2)
