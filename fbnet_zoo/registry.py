"""Named architectures: the zoo's YAML files plus any user arch dirs.

Names are matched loosely: "FBNetV3-E", "fbnetv3_e" and "FBNetV3_E" are one model.
User dirs come from ``register_arch_dir(path)`` or the ``FBNET_ZOO_ARCH_DIRS`` environment
variable (os.pathsep-separated); the search installs its winners there.
"""

from __future__ import annotations

import difflib
import glob
import logging
import os
import threading
from typing import Any, Dict, List, Mapping, Optional, Union

from .spec import ArchSpec, SpecError, load_spec

logger = logging.getLogger(__name__)

ENV_ARCH_DIRS = "FBNET_ZOO_ARCH_DIRS"


class UnknownModelError(KeyError):
    """No registered architecture has that name."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def normalize_name(name: str) -> str:
    """The registry key of a model name: lower case, '-' and ' ' as '_'."""
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def model_configs_dir(sub: str) -> Optional[str]:
    """``model_configs/<sub>`` as shipped: inside the installed package (wheel), beside it (source
    tree), or through the import hook of an editable install; None when absent."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "model_configs", sub),                 # installed wheel
                      os.path.join(os.path.dirname(here), "model_configs", sub)):  # source tree
        if os.path.isdir(candidate):
            return candidate
    try:
        from importlib.resources import files

        path = str(files("fbnet_zoo.model_configs") / sub)
    except (ImportError, TypeError):
        return None
    return path if os.path.isdir(path) else None


def yaml_files(directory: str) -> List[str]:
    """The ``*.yaml`` / ``*.yml`` files of a data folder, sorted."""
    return sorted(glob.glob(os.path.join(directory, "*.yaml")) + glob.glob(os.path.join(directory, "*.yml")))


def env_dirs(var: str, value: str) -> List[str]:
    """The folders in ``value`` (the os.pathsep-separated environment variable ``var``); a
    name that is not a folder is skipped with a warning."""
    dirs = []
    for d in filter(None, value.split(os.pathsep)):
        if os.path.isdir(d):
            dirs.append(d)
        else:
            logger.warning("%s names %s, which is not a directory", var, d)
    return dirs


def _package_arch_dir() -> str:
    path = model_configs_dir("archs")
    if path is None:
        raise RuntimeError("fbnet_zoo: model_configs/archs not found; reinstall the package")
    return path


class _Registry:
    def __init__(self) -> None:
        self._specs: Dict[str, ArchSpec] = {}
        self._sources: Dict[str, str] = {}
        self._dirs: List[str] = []
        self._loaded_env: Optional[str] = None
        self._lock = threading.RLock()
        self._builtin_loaded = False

    def _ensure(self) -> None:
        with self._lock:
            if not self._builtin_loaded:
                self._builtin_loaded = True
                self.add_dir(_package_arch_dir(), overwrite=False)
            env = os.environ.get(ENV_ARCH_DIRS, "")
            if env != self._loaded_env:
                self._loaded_env = env
                for d in env_dirs(ENV_ARCH_DIRS, env):
                    self.add_dir(d, overwrite=True)

    def add(self, spec: ArchSpec, source: str, overwrite: bool) -> str:
        key = normalize_name(spec.name)
        with self._lock:
            if key in self._specs and not overwrite and self._specs[key] != spec:
                raise SpecError(f"name: {spec.name!r} is already registered (from {self._sources[key]}); "
                                "pass overwrite=True to replace it")
            self._specs[key] = spec
            self._sources[key] = source
        return key

    def add_dir(self, directory: str, overwrite: bool = True) -> List[str]:
        names = []
        for path in yaml_files(directory):
            spec = ArchSpec.from_yaml(path)
            names.append(self.add(spec, path, overwrite))
        with self._lock:
            if directory not in self._dirs:
                self._dirs.append(directory)
        return names

    def get(self, name: str) -> ArchSpec:
        self._ensure()
        key = normalize_name(name)
        with self._lock:
            if key in self._specs:
                return self._specs[key]
            close = difflib.get_close_matches(key, list(self._specs), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(self._specs[c].name for c in close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint} (fbnet_zoo.list_models() lists all)")

    def names(self) -> List[str]:
        self._ensure()
        with self._lock:
            return sorted(spec.name for spec in self._specs.values())


_REGISTRY = _Registry()


def get_spec(name: str) -> ArchSpec:
    """The registered ArchSpec called ``name`` (loose matching, see normalize_name)."""
    if not isinstance(name, str):
        raise SpecError(f"name: {name!r} is not a string")
    return _REGISTRY.get(name)


def list_models(pattern: Optional[str] = None) -> List[str]:
    """Registered model names, optionally filtered by a glob pattern on the normalised name."""
    import fnmatch

    names = _REGISTRY.names()
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(normalize_name(n), normalize_name(pattern))]
    return names


def register_arch(spec: Union[ArchSpec, Mapping[str, Any], str], overwrite: bool = False) -> str:
    """Register one spec (object, dict or YAML path); returns its registry key."""
    _REGISTRY._ensure()
    spec = load_spec(spec)
    return _REGISTRY.add(spec, "register_arch()", overwrite)


def register_arch_dir(directory: Union[str, os.PathLike]) -> List[str]:
    """Register every *.yaml arch in ``directory`` (later registrations win)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise SpecError(f"arch dir: {directory!r} is not a directory")
    _REGISTRY._ensure()
    return _REGISTRY.add_dir(directory, overwrite=True)


def build_model(name_or_spec: Union[ArchSpec, Mapping[str, Any], str], num_classes: int = 1000,
                pretrained: Union[bool, str] = False, **overrides: Any):
    """Build a model from a zoo name, YAML path, dict or ArchSpec.

    overrides: builder options (``dropout``, ``drop_path_rate``, ``norm_layer``) and spec
    fields (``input_size``, ``width_divisor``, ``in_channels``). ``pretrained``: True (the
    model's default source), a source name, a local path or a URL (see checkpoints.py).
    """
    from .model import FBNet

    spec = load_spec(name_or_spec)
    spec_fields = {k: overrides.pop(k) for k in ("input_size", "width_divisor", "in_channels", "name")
                   if k in overrides}
    if spec_fields:
        spec = spec.replace(**spec_fields)
    builder_keys = {"dropout", "drop_path_rate", "norm_layer"}
    unknown = sorted(set(overrides) - builder_keys)
    if unknown:
        raise TypeError(f"build_model: unknown option {unknown[0]!r}; allowed: "
                        f"{sorted(builder_keys | {'input_size', 'width_divisor', 'in_channels', 'name'})}")
    model = FBNet(spec, num_classes=num_classes, **overrides)
    if pretrained:
        from .checkpoints import load_pretrained

        load_pretrained(model, pretrained, name=spec.name)
    return model
