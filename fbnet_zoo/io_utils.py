"""File helpers: crash-safe writes (a reader sees the old file or the new one, never half of
one), safe output names, strict YAML reading (duplicate keys refused), the shipped data folders
and the one registry class for folders of YAML files (archs, checkpoint sources, detection presets).

Atomic writes give the new file the mode an ordinary ``open(path, "w")`` would (0666 minus
the umask), or the mode of the file it replaces -- not the 0600 of a temp file.

Output names: every writer that names a file after something a user controls (an arch name
in a YAML, a search winner, a CIFAR variant) builds the path with ``output_file(folder,
name, suffix)``. The policy is to refuse, not to sanitise: a name that is not one plain
file name (empty, ``.``/``..``, containing a path separator, an absolute path, a drive, a
NUL or other control character) raises ``UnsafeNameError`` naming the name, the folder and
what is allowed, so nothing is ever written outside the folder and no two names are
silently mapped to one file.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import tempfile
import threading
from typing import IO, Any, Callable, Dict, Generic, Iterable, Iterator, List, Optional, Tuple, Type, TypeVar, Union

import yaml

from .errors import FBNetZooError, RegistryError, UnsafeNameError

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


MAX_NAME_BYTES = 255  # the usual file-name limit (ext4, xfs, apfs, NTFS in characters)


_umask_lock = threading.Lock()


def _umask() -> int:
    # Linux reports the umask without changing it; elsewhere it can only be read by setting it
    # (briefly, under a lock, as every reader of it in this process goes through here).
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The permission bits ``open(path, "w")`` gives a new file: 0o666 minus the umask."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """A temp file name beside ``path`` for a writer that wants a file name (torch.jit.save,
    torch.onnx.export, savefig); renamed onto ``path`` when the block succeeds, removed when it
    raises. ``suffix`` keeps an extension for writers that infer the format from it. The file
    ends up with the mode of the file it replaces, else 0666 minus the umask."""
    path = os.fspath(path)
    if os.path.isdir(path):  # else os.replace fails at the end, naming the temp file
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file to write", path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = new_file_mode()
        # mkstemp creates 0600; writers that re-create the file keep that or use the umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def check_file_name(name: str, what: str = "name", folder: PathLike = "") -> str:
    """``name`` itself if it is one plain file name, else UnsafeNameError (see the module doc)."""
    where = f" (output folder {os.fspath(folder)})" if folder else ""
    allowed = ("allowed: one file name without '/', a backslash, ':', control characters or a leading '.', "
               f"at most {MAX_NAME_BYTES} bytes")
    if not isinstance(name, str):
        raise UnsafeNameError(f"{what}: {name!r} is not a string; {allowed}")
    problem = None
    if not name.strip():
        problem = "is empty"
    elif any(sep in name for sep in ("/", "\\", os.sep, os.altsep or "/")):
        problem = "contains a path separator (it would write outside the folder)"
    elif name.startswith("."):
        problem = "starts with '.' (would be '.', '..' or a hidden file)"
    elif ":" in name:
        problem = "contains ':' (a drive or stream name on Windows)"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "contains a control character"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        problem = f"is longer than {MAX_NAME_BYTES} bytes"
    if problem:
        raise UnsafeNameError(f"{what}: {name!r} {problem}{where}; {allowed}")
    return name


def output_file(folder: PathLike, name: str, suffix: str = "", what: str = "name") -> str:
    """``folder/<name><suffix>``, refusing any ``name`` that could leave ``folder``.

    The one place that turns a user-controlled name into an output path: ``name`` must pass
    ``check_file_name``; the joined path is checked to resolve inside ``folder`` as well
    (a second line of defence against a hostile ``suffix``). Raises UnsafeNameError naming ``what``, the name and the folder.
    """
    folder = os.fspath(folder)
    check_file_name(name, what, folder)
    path = os.path.join(folder, name + suffix)
    if os.path.dirname(os.path.abspath(path)) != os.path.abspath(folder):
        raise UnsafeNameError(f"{what}: {name!r} + {suffix!r} leaves the output folder {folder}")
    return path


# --------------------------------------------------------------------------- strict YAML
class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice (PyYAML keeps the last one
    silently, so a typo'd duplicate would quietly change a spec)."""


def _construct_unique_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    loader.flatten_mapping(node)
    seen: Dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: let construct_mapping raise its own error
            break
        if first is not None:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {key!r} (first given on line {first.line + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_yaml(text: Union[str, IO[str]], source: str, error: Type[FBNetZooError]) -> Any:
    """``yaml.safe_load`` that also refuses duplicate keys; every failure (bad syntax, a
    duplicate key, nesting deep enough to exhaust the recursion limit) raises ``error``
    naming ``source``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise error(f"{source}: not valid YAML ({' '.join(str(e).split())})") from None
    except RecursionError:
        raise error(f"{source}: nested too deeply to be a config file") from None


def read_yaml_file(path: str, error: Type[FBNetZooError]) -> Any:
    """A YAML file (local path or anything iopath opens) through ``load_yaml``."""
    from iopath.common.file_io import g_pathmgr

    try:
        with g_pathmgr.open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise error(f"{path}: cannot read ({e})") from None
    return load_yaml(text, path, error)


# --------------------------------------------------------------------------- data folders
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


def data_dir(sub: str) -> str:
    """``model_configs/<sub>``; RegistryError when the package was installed without it."""
    path = model_configs_dir(sub)
    if path is None:
        raise RegistryError(f"fbnet_zoo: model_configs/{sub} not found; reinstall the package")
    return path


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


T = TypeVar("T")
Parser = Callable[[Any, str], Iterable[Tuple[str, T]]]


class YamlFolderRegistry(Generic[T]):
    """Items read from folders of YAML files: the package's ``model_configs/<builtin>`` folder,
    the folders named by the environment variable ``env_var`` (re-read whenever its value
    changes) and folders / items registered at run time. Later registrations win.

    ``parse(data, path)`` turns one file's YAML into ``(key, item)`` pairs and raises ``error``
    for a bad one; ``merge(old, new)`` (optional) combines two items with one key instead of
    replacing. A bad file in the built-in folder or in an explicitly registered folder raises
    ``error`` naming the file. A bad file in an environment folder is skipped, and that is
    the same on every lookup: a warning naming the file is logged each time the variable is
    (re)read, ``skipped()`` lists the files and why, and ``missing_hint()`` repeats it for
    the caller's "not found" error. A folder is read whole before anything from it is
    registered, so a bad file never leaves half a folder behind.
    """

    def __init__(self, what: str, parse: Parser, error: Type[FBNetZooError], builtin: Optional[str] = None,
                 env_var: Optional[str] = None, merge: Optional[Callable[[T, T], T]] = None) -> None:
        self.what, self.parse, self.error, self.builtin, self.env_var, self.merge = \
            what, parse, error, builtin, env_var, merge
        self._items: Dict[str, T] = {}
        self._sources: Dict[str, str] = {}
        self._skipped: Dict[str, str] = {}
        self._lock = threading.RLock()
        self._builtin_loaded = False
        self._env: Optional[str] = None

    # ---- reading
    def read_file(self, path: str) -> List[Tuple[str, T]]:
        """The (key, item) pairs of one file; ``error`` naming the file when it is bad."""
        data = read_yaml_file(path, self.error)
        try:
            return list(self.parse(data, path))
        except FBNetZooError as e:
            message = str(e)
            raise self.error(message if message.startswith(path) else f"{path}: {message}") from None

    def _read_dir(self, directory: str, lenient: bool) -> List[Tuple[str, T, str]]:
        out = []
        for path in yaml_files(directory):
            try:
                out.extend((key, item, path) for key, item in self.read_file(path))
            except FBNetZooError as e:
                if not lenient:
                    raise
                self._skipped[path] = str(e)
                logger.warning("%s: skipped a bad %s file: %s", self.env_var, self.what, e)
        return out

    def ensure(self) -> None:
        """Load the built-in folder once and the environment folders whenever the variable changed."""
        with self._lock:
            if not self._builtin_loaded and self.builtin is not None:
                entries = self._read_dir(data_dir(self.builtin), lenient=False)
                self._builtin_loaded = True
                for key, item, path in entries:
                    self._put(key, item, path)
            if self.env_var is not None:
                env = os.environ.get(self.env_var, "")
                if env != self._env:
                    self._env = env
                    self._skipped = {}
                    for d in env_dirs(self.env_var, env):
                        for key, item, path in self._read_dir(d, lenient=True):
                            self._put(key, item, path)

    # ---- writing
    def _put(self, key: str, item: T, source: str) -> None:
        if self.merge is not None and key in self._items:
            item = self.merge(self._items[key], item)
        self._items[key] = item
        self._sources[key] = source

    def add(self, key: str, item: T, source: str, overwrite: bool = True) -> str:
        with self._lock:
            self.ensure()
            if not overwrite and key in self._items and self._items[key] != item:
                raise self.error(f"{key!r} is already registered as a {self.what} (from {self._sources[key]}); "
                                 "pass overwrite=True to replace it")
            self._put(key, item, source)
        return key

    def add_file(self, path: str, overwrite: bool = True) -> List[str]:
        pairs = self.read_file(path)
        return [self.add(key, item, path, overwrite) for key, item in pairs]

    def add_dir(self, directory: str, overwrite: bool = True) -> List[str]:
        """Register every YAML file of ``directory``; a bad file raises (nothing is registered)."""
        if not os.path.isdir(directory):
            raise self.error(f"{self.what} dir: {directory!r} is not a directory")
        entries = self._read_dir(directory, lenient=False)
        with self._lock:
            return [self.add(key, item, path, overwrite) for key, item, path in entries]

    # ---- lookups
    def get(self, key: str) -> Optional[T]:
        with self._lock:
            self.ensure()
            return self._items.get(key)

    def items(self) -> Dict[str, T]:
        with self._lock:
            self.ensure()
            return dict(self._items)

    def source(self, key: str) -> Optional[str]:
        with self._lock:
            return self._sources.get(key)

    def skipped(self) -> Dict[str, str]:
        """Files of the environment folders that were skipped, with the reason."""
        with self._lock:
            self.ensure()
            return dict(self._skipped)

    def missing_hint(self) -> str:
        """Text for a "not found" error when files were skipped (empty otherwise)."""
        skipped = self.skipped()
        if not skipped:
            return ""
        return f" ({len(skipped)} bad file(s) in {self.env_var} skipped: " + "; ".join(skipped.values()) + ")"
