"""Kill -9 a search at several points, resume it, and get the uninterrupted run's result."""

import collections
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from fbnet_zoo.search.config import load_config
from fbnet_zoo.search.runner import run_search
from fbnet_zoo.search.store import RunStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "search.py")
ARGS = ["default", "executor.kind=oracle", "oracle.delay_s=0.08", "family.enabled=false", "stage2.rounds=3",
        "stage2.m=6", "pool.n=512", "predictor.pretrain_epochs=10"]


def _query(db, sql):
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
        try:
            return con.execute(sql).fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return None


KILL_POINTS = [  # (what, SQL returning a truthy value once that point is reached)
    ("after stage 1", "SELECT COUNT(*) FROM progress WHERE stage='stage1'"),
    ("mid round 1", "SELECT COUNT(*) >= 3 FROM candidates WHERE status != 'pending'"),
    ("mid round 2", "SELECT COUNT(*) >= 8 FROM candidates WHERE status != 'pending'"),
    ("after round 2's refit", "SELECT COUNT(*) FROM checkpoints WHERE name='round2'"),
    ("mid stage 3", "SELECT COUNT(*) FROM results"),
]


def _outcome(run_dir):
    store = RunStore(run_dir)
    try:
        cands = [(c["key"], c["round"], c["position"], c["status"], tuple(c["top1"])) for c in store.candidates()]
        results = {label: (r["key"], r["flops"], r["params"], r["predicted_top1"], r["history"])
                   for label, r in store.results().items()}
        early = store.get_progress("early_stop")["info"]["epoch"]
    finally:
        store.close()
    return cands, results, early


@pytest.mark.slow
def test_search_killed_at_several_points_resumes_to_the_uninterrupted_result(tmp_path):
    env = dict(os.environ, PYTHONHASHSEED="0")
    run_dir = str(tmp_path / "killed")
    db = os.path.join(run_dir, "search.sqlite")
    cmd = [sys.executable, TOOL] + ARGS + ["--run-dir", run_dir, "--no-progress"]
    killed_at = []
    for what, sql in KILL_POINTS:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 240  # a loaded CI machine needs a minute just to import and draw the pool
        while proc.poll() is None and time.time() < deadline:
            if os.path.exists(db) and _query(db, sql):
                os.kill(proc.pid, signal.SIGKILL)
                killed_at.append(what)
                break
            time.sleep(0.005)
        proc.wait()
        if proc.returncode == 0:  # finished before this point could be hit
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
        proc.stderr.close()
        cmd = [sys.executable, TOOL, "--resume", run_dir, "--no-progress"]
    print("killed at:", killed_at)
    assert len(killed_at) >= 3, killed_at
    if proc.returncode != 0:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr

    reference = str(tmp_path / "uninterrupted")
    run_search(load_config(ARGS[0], ARGS[1:]), reference, report=False)
    assert _outcome(run_dir) == _outcome(reference)

    trained = collections.Counter(open(os.path.join(run_dir, "oracle_trained.log")).read().split())
    assert max(trained.values()) == 1, [k for k, n in trained.items() if n > 1]
    assert set(trained) == {c[0] for c in _outcome(run_dir)[0]}
    assert os.path.exists(os.path.join(run_dir, "report.md"))
