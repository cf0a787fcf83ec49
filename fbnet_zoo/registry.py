"""Named architectures: the zoo's YAML files plus any user arch dirs; zoo names -> ArchSpec.

Names are matched loosely: "FBNetV3-E", "fbnetv3_e" and "FBNetV3_E" are one model.
User dirs come from ``register_arch_dir(path)`` or the ``FBNET_ZOO_ARCH_DIRS`` environment
variable (os.pathsep-separated); the search installs its winners there. A bad file in an
``FBNET_ZOO_ARCH_DIRS`` folder is skipped on every lookup, with a warning naming it (and the
"unknown model" error repeats it); a bad file given to ``register_arch_dir`` raises.

This module resolves names and then hands files and dicts to ``spec.load_spec``; building
models is factory.py's job.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from typing import Any, Iterable, List, Mapping, Optional, Tuple, Union

from .errors import SpecError, UnknownModelError
from .io_utils import YamlFolderRegistry, env_dirs, model_configs_dir, yaml_files
from .spec import ArchSpec, names_a_file
from .spec import load_spec as load_spec_file

ENV_ARCH_DIRS = "FBNET_ZOO_ARCH_DIRS"

__all__ = [
    "ENV_ARCH_DIRS", "UnknownModelError", "get_spec", "list_models", "load_spec", "normalize_name",
    "register_arch", "register_arch_dir",
    # data-folder helpers, re-exported for older imports (they live in io_utils)
    "env_dirs", "model_configs_dir", "yaml_files",
]

SpecLike = Union[ArchSpec, Mapping[str, Any], str, os.PathLike]


def normalize_name(name: str) -> str:
    """The registry key of a model name: lower case, '-' and ' ' as '_'."""
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def _parse_arch_file(data: Any, path: str) -> Iterable[Tuple[str, ArchSpec]]:
    if not isinstance(data, Mapping):
        raise SpecError(f"{path}: expected a mapping with 'name', 'input_size' and 'stages', got {type(data).__name__}")
    spec = ArchSpec.from_dict(data, os.path.splitext(os.path.basename(path))[0])
    return [(normalize_name(spec.name), spec)]


_ARCHS: YamlFolderRegistry[ArchSpec] = YamlFolderRegistry(
    "arch", _parse_arch_file, SpecError, builtin="archs", env_var=ENV_ARCH_DIRS)


def get_spec(name: str) -> ArchSpec:
    """The registered ArchSpec called ``name`` (loose matching, see normalize_name)."""
    if not isinstance(name, str):
        raise SpecError(f"name: {name!r} is not a string")
    key = normalize_name(name)
    spec = _ARCHS.get(key)
    if spec is not None:
        return spec
    known = _ARCHS.items()
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(known[c].name for c in close)}?" if close else ""
    raise UnknownModelError(f"unknown model {name!r}{hint} (fbnet_zoo.list_models() lists all)"
                            f"{_ARCHS.missing_hint()}")


def load_spec(source: SpecLike) -> ArchSpec:
    """An ArchSpec from a spec, a dict, a YAML path/URL or a registered zoo name."""
    if isinstance(source, str) and not names_a_file(source):
        return get_spec(source)
    return load_spec_file(source)


def list_models(pattern: Optional[str] = None) -> List[str]:
    """Registered model names, optionally filtered by a glob pattern on the normalised name."""
    names = sorted(spec.name for spec in _ARCHS.items().values())
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(normalize_name(n), normalize_name(pattern))]
    return names


def register_arch(spec: SpecLike, overwrite: bool = False) -> str:
    """Register one spec (object, dict or YAML path); returns its registry key."""
    spec = load_spec(spec)
    return _ARCHS.add(normalize_name(spec.name), spec, "register_arch()", overwrite)


def register_arch_dir(directory: Union[str, os.PathLike]) -> List[str]:
    """Register every *.yaml arch in ``directory`` (later registrations win); a bad file raises
    SpecError naming it, and then nothing of the folder is registered."""
    return _ARCHS.add_dir(os.fspath(directory), overwrite=True)


def arch_source(name: str) -> Optional[str]:
    """The file (or "register_arch()") a registered arch came from."""
    return _ARCHS.source(normalize_name(name))
