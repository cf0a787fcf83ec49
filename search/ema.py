"""Deprecated alias: this module moved to ``fbnet_zoo.training.ema`` (the same module object)."""

import importlib
import sys
import warnings

warnings.warn("fbnet_zoo.search.ema moved to fbnet_zoo.training.ema", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("fbnet_zoo.training.ema")
