"""The durable run store: one SQLite file per run directory.

Holds the config (and its digest), the pool seed, every candidate handed to training (its
spec, recipe, decoded values, round, predicted score, per-epoch metrics, status, error,
timings), predictor checkpoints (bytes), the round selections, stage progress and stage-3
results. Every write is one transaction, so a process killed at any moment (kill -9) leaves
the store at the last committed write; results are committed one candidate at a time.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sqlite3
import time
from typing import Any, Dict, List, Optional, Sequence

from .candidate import TrainResult
from .config import SearchRunError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    key TEXT PRIMARY KEY,
    round INTEGER NOT NULL,
    position INTEGER NOT NULL,
    arch TEXT NOT NULL,
    recipe TEXT NOT NULL,
    vals TEXT NOT NULL,
    flops REAL, params REAL,
    predicted REAL,
    epochs_planned INTEGER,
    status TEXT NOT NULL DEFAULT 'pending',
    top1 TEXT, loss TEXT, epoch_seconds TEXT,
    error TEXT,
    extra TEXT,
    wall_seconds REAL,
    created REAL, finished REAL
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, keys TEXT NOT NULL, epochs INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'selected', started REAL, finished REAL
);
CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, blob BLOB NOT NULL, info TEXT, created REAL);
CREATE TABLE IF NOT EXISTS progress (stage TEXT PRIMARY KEY, status TEXT NOT NULL, info TEXT, updated REAL);
CREATE TABLE IF NOT EXISTS results (label TEXT PRIMARY KEY, data TEXT NOT NULL, created REAL);
"""

DB_NAME = "search.sqlite"
LOCK_NAME = "search.lock"
TABLES = ("meta", "candidates", "rounds", "checkpoints", "progress", "results")


class RunLock:
    """One process per run directory: an exclusive ``fcntl.flock`` on ``<run_dir>/search.lock``.

    The OS drops the lock when the holder exits, however it exits (kill -9 included), so a
    stale lock file never blocks a resume. The file records the holder (pid, host, start time)
    for the message a second process gets."""

    def __init__(self, run_dir: str) -> None:
        self.path = os.path.join(run_dir, LOCK_NAME)
        try:
            self._f = open(self.path, "a+", encoding="utf-8")
        except OSError as e:
            raise SearchRunError(f"run dir {run_dir!r}: cannot open the lock file {self.path} ({e})") from None
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._f.seek(0)
            holder = self._f.read().strip() or "another process (it has not written its name yet)"
            self._f.close()
            raise SearchRunError(f"run dir {run_dir!r} is in use by {holder}; one process per run dir "
                                 f"(lock: {self.path})") from None
        self._f.seek(0)
        self._f.truncate()
        start = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self._f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {start}\n")
        self._f.flush()

    def release(self) -> None:
        if not self._f.closed:
            fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()


class RunStore:
    """The run's SQLite store. ``create=False`` opens an existing store and refuses one that is
    empty, corrupt, truncated, foreign or read-only, naming the file (it never writes a fresh
    schema over such a file)."""

    def __init__(self, run_dir: str, create: bool = True) -> None:
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, DB_NAME)
        if create:
            os.makedirs(run_dir, exist_ok=True)
        else:
            self._check_file()
        try:
            # mode=rw never creates the file; a new store is created only when asked to
            uri = f"file:{self.path}?mode={'rwc' if create else 'rw'}"
            self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=60.0)
            if not create:
                self._check_contents()
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            if create:
                self.conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            if getattr(self, "conn", None) is not None:
                self.conn.close()
            raise SearchRunError(f"{self.path}: cannot use this run store ({e}); it is corrupt, truncated or "
                                 "read-only") from None

    def _check_file(self) -> None:
        p = self.path
        if not os.path.isfile(p):
            raise SearchRunError(f"{p}: no run store here")
        if os.path.getsize(p) == 0:
            raise SearchRunError(f"{p}: the run store is empty (0 bytes), not a search run; left untouched "
                                 "(remove it to start a new run in this directory)")
        for f in (p, os.path.dirname(p) or "."):
            # SQLite writes the store and its -wal/-shm files beside it; os.access ignores root's bypass
            if not os.access(f, os.W_OK) or (os.stat(f).st_mode & 0o222) == 0:
                raise SearchRunError(f"{f}: read-only; a run store must be writable to resume")

    def _check_contents(self) -> None:
        bad = self.conn.execute("PRAGMA quick_check").fetchone()[0]
        if bad != "ok":
            raise sqlite3.DatabaseError(f"integrity check: {bad}")
        have = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = [t for t in TABLES if t not in have]
        if missing:
            raise sqlite3.DatabaseError(f"not a search run store (tables missing: {missing})")

    @staticmethod
    def exists(run_dir: str) -> bool:
        return os.path.exists(os.path.join(run_dir, DB_NAME))

    def close(self) -> None:
        self.conn.close()

    def _tx(self, statements: Sequence[tuple]) -> None:
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                cur.execute(sql, args)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ meta
    def set_meta(self, **items: Any) -> None:
        self._tx([("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, json.dumps(v))) for k, v in items.items()])

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    # ------------------------------------------------------------------ rounds and candidates
    def add_round(self, rnd: int, entries: Sequence[Dict[str, Any]], epochs: int) -> None:
        """Record round ``rnd``'s selection and its pending candidates in one transaction.

        entries: dicts with key, arch (dict), recipe (dict), values, flops, params, predicted."""
        now = time.time()
        stmts = [("INSERT INTO rounds (round, keys, epochs, status, started) VALUES (?, ?, ?, 'selected', ?)",
                  (rnd, json.dumps([e["key"] for e in entries]), epochs, now))]
        for pos, e in enumerate(entries):
            stmts.append(("INSERT INTO candidates (key, round, position, arch, recipe, vals, flops, params, predicted,"
                          " epochs_planned, status, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                          (e["key"], rnd, pos, json.dumps(e["arch"]), json.dumps(e["recipe"]),
                           json.dumps(e["values"]), e.get("flops"), e.get("params"), e.get("predicted"), epochs, now)))
        self._tx(stmts)

    def get_round(self, rnd: int) -> Optional[Dict[str, Any]]:
        row = self.conn.execute("SELECT keys, epochs, status FROM rounds WHERE round=?", (rnd,)).fetchone()
        if row is None:
            return None
        return {"round": rnd, "keys": json.loads(row[0]), "epochs": row[1], "status": row[2]}

    def finish_round(self, rnd: int) -> None:
        self._tx([("UPDATE rounds SET status='done', finished=? WHERE round=?", (time.time(), rnd))])

    def record_result(self, result: TrainResult) -> None:
        """One candidate's outcome, one transaction. Ignored if the key is already finished
        (a ``retryable`` candidate is not finished: it trains again on resume)."""
        self._tx([("UPDATE candidates SET status=?, top1=?, loss=?, epoch_seconds=?, error=?, extra=?, "
                   "wall_seconds=?, finished=? WHERE key=? AND status IN ('pending', 'retryable')",
                   (result.status, json.dumps(list(result.top1)), json.dumps(list(result.loss)),
                    json.dumps(list(result.epoch_seconds)), result.error, json.dumps(result.extra, default=str),
                    float(sum(result.epoch_seconds)),
                    time.time(), result.key))])

    def candidates(self, rnd: Optional[int] = None, status: Optional[str] = None) -> List[Dict[str, Any]]:
        sql = ("SELECT key, round, position, arch, recipe, vals, flops, params, predicted, epochs_planned, status, "
               "top1, loss, epoch_seconds, error, extra, wall_seconds FROM candidates")
        cond, args = [], []
        if rnd is not None:
            cond.append("round=?")
            args.append(rnd)
        if status is not None:
            cond.append("status=?")
            args.append(status)
        if cond:
            sql += " WHERE " + " AND ".join(cond)
        sql += " ORDER BY round, position"
        out = []
        for r in self.conn.execute(sql, args):
            out.append({"key": r[0], "round": r[1], "position": r[2], "arch": json.loads(r[3]),
                        "recipe": json.loads(r[4]), "values": json.loads(r[5]), "flops": r[6], "params": r[7],
                        "predicted": r[8], "epochs_planned": r[9], "status": r[10],
                        "top1": json.loads(r[11]) if r[11] else [], "loss": json.loads(r[12]) if r[12] else [],
                        "epoch_seconds": json.loads(r[13]) if r[13] else [], "error": r[14],
                        "extra": json.loads(r[15]) if r[15] else {}, "wall_seconds": r[16]})
        return out

    def known_keys(self) -> set:
        return {r[0] for r in self.conn.execute("SELECT key FROM candidates")}

    # ------------------------------------------------------------------ checkpoints / progress / results
    def save_checkpoint(self, name: str, blob: bytes, info: Optional[Dict[str, Any]] = None,
                        progress: Optional[tuple] = None) -> None:
        stmts = [("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?)",
                  (name, sqlite3.Binary(blob), json.dumps(info or {}, default=str), time.time()))]
        if progress is not None:
            stage, status, pinfo = progress
            stmts.append(("INSERT OR REPLACE INTO progress VALUES (?, ?, ?, ?)",
                          (stage, status, json.dumps(pinfo or {}, default=str), time.time())))
        self._tx(stmts)

    def load_checkpoint(self, name: str) -> Optional[bytes]:
        row = self.conn.execute("SELECT blob FROM checkpoints WHERE name=?", (name,)).fetchone()
        return bytes(row[0]) if row else None

    def checkpoint_info(self, name: str) -> Optional[Dict[str, Any]]:
        row = self.conn.execute("SELECT info FROM checkpoints WHERE name=?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_progress(self, stage: str, status: str, info: Optional[Dict[str, Any]] = None) -> None:
        self._tx([("INSERT OR REPLACE INTO progress VALUES (?, ?, ?, ?)",
                   (stage, status, json.dumps(info or {}, default=str), time.time()))])

    def get_progress(self, stage: str) -> Optional[Dict[str, Any]]:
        row = self.conn.execute("SELECT status, info FROM progress WHERE stage=?", (stage,)).fetchone()
        return {"status": row[0], "info": json.loads(row[1]) if row[1] else {}} if row else None

    def all_progress(self) -> Dict[str, Dict[str, Any]]:
        return {r[0]: {"status": r[1], "info": json.loads(r[2]) if r[2] else {}}
                for r in self.conn.execute("SELECT stage, status, info FROM progress ORDER BY stage")}

    def set_result(self, label: str, data: Dict[str, Any]) -> None:
        self._tx([("INSERT OR REPLACE INTO results VALUES (?, ?, ?)", (label, json.dumps(data, default=str),
                                                                        time.time()))])

    def get_result(self, label: str) -> Optional[Dict[str, Any]]:
        row = self.conn.execute("SELECT data FROM results WHERE label=?", (label,)).fetchone()
        return json.loads(row[0]) if row else None

    def results(self) -> Dict[str, Dict[str, Any]]:
        return {r[0]: json.loads(r[1]) for r in self.conn.execute("SELECT label, data FROM results ORDER BY label")}
