"""How well does the embedded default's stage-2 predictor rank candidates it never saw, over
many seeds? The default search (``tools/search.py`` with ``seed=S``) run for each seed, one
process and one thread each, ``--workers`` at a time; per run, the report's 5-fold
cross-validated Spearman of the configured refit (``predictor.refit_model``) and, on the very
same labels and fold split, of the other refit model (paired comparison: ``proxy_ridge`` vs the
MLP refit), plus the run's winners.

    python benchmarks/embedded_default_seeds.py [CONFIG] [key=value ...] [--seeds 0-13] [--workers 2]
        [--runs-dir DIR]
Writes benchmarks/results/embedded_default_seeds.json (``--out``). A run directory that already
holds a finished run is resumed (nothing retrained), so an interrupted measurement continues.
Issue 11 item 6 asks the default run's held-out Spearman to reach 0.5.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def parse_seeds(text: str) -> list:
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def run_one(config: str, overrides: list, seed: int, run_dir: str) -> float:
    """One search process (resumed when its directory holds a run); returns its wall seconds."""
    resume = os.path.exists(os.path.join(run_dir, "search.sqlite"))
    cmd = [sys.executable, os.path.join(ROOT, "tools", "search.py")]
    cmd += ["--resume", run_dir] if resume else [config, *overrides, f"seed={seed}", "--run-dir", run_dir]
    t0 = time.perf_counter()
    with open(run_dir.rstrip("/") + ".log", "w") as log:
        subprocess.run(cmd + ["--no-progress"], check=True, stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def summarise(run_dir: str) -> dict:
    from fbnet_zoo.search.predictor import cross_validated_rank_corr
    from fbnet_zoo.search.report import HELDOUT_FOLDS
    from fbnet_zoo.search.runner import SearchRun

    with open(os.path.join(run_dir, "report.json")) as f:
        report = json.load(f)
    cv = report["heldout"]["cross_validated"]
    run = SearchRun(None, run_dir, resume=True)
    try:
        rows = run.store.candidates(status="ok")
        x, y = run.labelled(rows, run.target_epoch())
        other = "mlp" if run.cfg.predictor.refit_model == "proxy_ridge" else "proxy_ridge"
        pcfg = dataclasses.replace(run.cfg.predictor, refit_model=other)
        # the same blob, labels and fold split (seed) as the report's number
        alt = cross_validated_rank_corr(run.store.load_checkpoint("stage1"), pcfg, x, y, HELDOUT_FOLDS, seed=run.seed)
        winners = {label: {"flops": w["flops"], "predicted_top1": w["predicted_top1"],
                           "best_measured": w.get("best_measured")} for label, w in report["results"].items()}
        return {"candidates": len(y), "top1_range": [float(y.min()), float(y.max())],
                "cv_spearman": {run.cfg.predictor.refit_model: cv["spearman"], other: alt["spearman"]},
                "last_round_spearman": (report["heldout"].get("last_round") or {}).get("spearman"),
                "winners": winners}
    finally:
        run.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", default="default")
    ap.add_argument("overrides", nargs="*", default=[])
    ap.add_argument("--seeds", default="0-13")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", "embedded_default_seeds"))
    ap.add_argument("--out", default=os.path.join(HERE, "results", "embedded_default_seeds.json"))
    args = ap.parse_args()

    import platform

    import torch

    from fbnet_zoo.io_utils import atomic_write_text

    seeds = parse_seeds(args.seeds)
    os.makedirs(args.runs_dir, exist_ok=True)
    dirs = {s: os.path.join(args.runs_dir, f"seed{s}") for s in seeds}
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.workers)) as pool:
        walls = dict(zip(seeds, pool.map(lambda s: run_one(args.config, args.overrides, s, dirs[s]), seeds)))
    runs = {}
    for s in seeds:
        runs[str(s)] = {"wall_seconds": round(walls[s], 1), **summarise(dirs[s])}
        print(f"seed {s}: CV Spearman {runs[str(s)]['cv_spearman']}", flush=True)
    models = sorted({m for r in runs.values() for m in r["cv_spearman"]})
    stats = {}
    for m in models:
        v = np.array([r["cv_spearman"][m] for r in runs.values()], dtype=float)
        stats[m] = {"mean": float(np.mean(v)), "median": float(np.median(v)), "std": float(np.std(v)),
                    "share_at_least_0.5": float(np.mean(v >= 0.5)), "n": int(len(v))}
    out = {"benchmark": "embedded_default_seeds", "config": args.config, "overrides": args.overrides,
           "seeds": seeds, "workers": args.workers, "wall_seconds": round(time.perf_counter() - t0, 1),
           "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
           "metric": "5-fold cross-validated Spearman of the stage-2 refit over the run's measured candidates "
                     "(the report's heldout.cross_validated; the other refit model on the same labels and folds)",
           "stats": stats, "runs": runs}
    print(json.dumps(stats, indent=1))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_text(args.out, json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
