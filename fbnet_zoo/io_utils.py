"""Crash-safe file writes and safe output names.

Atomic writes: a reader sees the old file or the new one, never half of one. The new file
gets the mode an ordinary ``open(path, "w")`` would give it (0666 minus the umask), or the
mode of the file it replaces -- not the 0600 of a temp file.

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
import os
import tempfile
import threading
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]

__all__ = ["UnsafeNameError", "atomic_path", "atomic_write_bytes", "atomic_write_text", "check_file_name",
           "new_file_mode", "output_file"]

MAX_NAME_BYTES = 255  # the usual file-name limit (ext4, xfs, apfs, NTFS in characters)


class UnsafeNameError(ValueError):
    """A name used to build an output path is not one plain file name inside the output folder."""


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
