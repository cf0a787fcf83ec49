"""Deprecated alias: this module moved to ``fbnet_zoo.training.recipe`` (the same module object)."""

import importlib
import sys
import warnings

warnings.warn("fbnet_zoo.search.recipe moved to fbnet_zoo.training.recipe", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("fbnet_zoo.training.recipe")
