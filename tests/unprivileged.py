"""Run a check as a user who cannot write a read-only folder, even when the tests run as root.

Root ignores directory permissions, so "read-only folder" tests would pass vacuously in a
root container. ``run_unprivileged(fn)`` calls ``fn()`` directly for an ordinary user; as
root it forks, drops to uid/gid 65534 (nobody) in the child, and hands ``fn``'s return value
or exception back to the caller. Paths ``fn`` uses must be readable by that user: create them
under ``shared_tmp_dir()``.
"""

import os
import pickle
import shutil
import tempfile

NOBODY = 65534


def shared_tmp_dir() -> str:
    """A fresh temp dir others can traverse (pytest's own tmp dirs are private to the user)."""
    d = tempfile.mkdtemp(prefix="fbnet_zoo_ro_")
    os.chmod(d, 0o755)
    return d


def remove_tree(path: str) -> None:
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    os.chmod(path, 0o755)
    shutil.rmtree(path, ignore_errors=True)


def run_unprivileged(fn):
    if os.geteuid() != 0:
        return fn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                payload = ("ok", fn())
            except BaseException as e:  # handed to the parent, which re-raises it
                payload = ("err", e)
            try:
                data = pickle.dumps(payload)
            except Exception as e:
                data = pickle.dumps(("err", RuntimeError(f"{type(payload[1]).__name__}: {payload[1]} ({e})")))
            with os.fdopen(w, "wb") as f:
                f.write(data)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError("the unprivileged child died without a result")
    kind, value = pickle.loads(data)
    if kind == "err":
        raise value
    return value
