#!/usr/bin/env python
"""NARS against random search and regularized evolution on NAS-Bench-201 (measured accuracies).

    python benchmarks/nas_bench_201.py --table PATH [--dataset NAME ...] [--methods nars,nars_nopretrain,rea,random]
        [--budgets 20,50,100,150] [--seeds N] [--out DIR] [--quick]

Every method queries the same table through the same counter (``fbnet_zoo.search.baselines``):
a query is one architecture's 200-epoch test accuracy; a repeated architecture costs nothing.
A method's result after B queries is the best accuracy among the architectures it queried
within B. NARS runs its three stages (Sobol pool, predictor with / without pretraining on
FLOPs and params, rounds of m with the local share of model_configs/search/nas_bench_201.yaml's
stage2.local_fraction / local_parents, stage-3 GA) and spends its last query on the GA's
best-predicted unmeasured cell.

Writes DIR/results.json (best-found accuracy after each budget: mean, std, n over seeds),
DIR/results.md (the table plus the predictor's Spearman on all unqueried architectures after
50 / 100 labels and queries-to-target with and without pretraining), DIR/details.json (those
extras, settings, timings) and DIR/<dataset>.png per dataset (best-so-far accuracy vs queries:
mean over seeds and a band of one standard error). Default datasets: every <dataset>_test_acc
column of the table. --quick: 2 seeds, budgets 20,50 (what the tests run).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from typing import Any, Dict, List, Sequence

import numpy as np

METHODS = ("nars", "nars_nopretrain", "rea", "random")
REA = {"population": 20, "sample": 5}           # Real et al. 2019 settings used for the anchors
# NARS on NAS-Bench-201: the whole space as the pool (15,625 cells: the predictor ranks all of
# them each round), rounds of 10, a small MLP refit full-batch from stage 1's weights each
# round, one unconstrained stage-3 GA whose best-predicted unmeasured cell is the last query.
# Stage 2's local share (stage2.local_fraction / local_parents) comes from model_configs/search/
# nas_bench_201.yaml, the search's own config for this space; ``winners``: stage 3's queries.
NARS = {"pool_n": 15625, "m": 10, "winners": 1,
        "predictor": {"hidden": [64, 64], "head_hidden": 32, "pretrain_epochs": 5, "batch_size": 1024,
                      "refit_batch_size": 1024, "refit_frozen_epochs": 40, "refit_full_epochs": 40},
        "stage3": {"population": 32, "top_k": 16, "max_generations": 30, "patience": 5, "seeds": 8}}
TARGET_QUANTILE = 0.995    # queries-to-target: reach the top 0.5% of the table's accuracies

_TABLES: Dict[str, Any] = {}
_CONFIGS: Dict[str, Any] = {}


def _config(dataset: str):
    """The search's config for this space (model_configs/search/nas_bench_201.yaml) on ``dataset``."""
    if dataset not in _CONFIGS:
        from fbnet_zoo.search.config import load_config

        _CONFIGS[dataset] = load_config("nas_bench_201", [f"bench.dataset={dataset}"] + ([] if dataset in (
            "cifar10", "cifar10-valid", "cifar100", "ImageNet16-120") else ["space.num_classes=10"]))
    return _CONFIGS[dataset]


def _table(path: str, dataset: str):
    """The dataset's TabularSpace, built once per process."""
    key = f"{path}:{dataset}"
    if key not in _TABLES:
        from fbnet_zoo.search.baselines import TabularSpace
        from fbnet_zoo.search.tabular import Table

        space = _config(dataset).search_space
        table = Table.from_csv(path, dataset)
        _TABLES[key] = TabularSpace(space, space.arch_of, dict(zip(table.archs, table.acc)))
    return _TABLES[key]


def run_seed(job: Dict[str, Any]) -> Dict[str, Any]:
    """Every method for one (dataset, seed): best-so-far traces and per-budget results."""
    import torch

    from fbnet_zoo.search.baselines import (NARSSettings, best_after, nars, pretrained_predictor,
                                            random_search, regularized_evolution, sobol_pool)

    torch.set_num_threads(1)
    table = _table(job["table"], job["dataset"])
    seed, budgets, top = job["seed"], job["budgets"], max(job["budgets"])
    out: Dict[str, Any] = {"dataset": job["dataset"], "seed": seed, "methods": {}, "seconds": {}}
    pool = None   # stage 1's Sobol pool depends on the seed only: both NARS variants share it
    for method in job["methods"]:
        t0 = time.process_time()   # CPU time: comparable across loaded and idle machines
        if method in ("random", "rea"):
            log = random_search(table, top, seed) if method == "random" else \
                regularized_evolution(table, top, seed, REA["population"], REA["sample"])
            curve = log.best_so_far()
            out["methods"][method] = {"results": {b: best_after(curve, b) for b in budgets}, "curve": curve.tolist()}
        else:
            s2 = _config(job["dataset"]).stage2
            settings = NARSSettings(pretrain=(method == "nars"), pool_n=NARS["pool_n"], m=NARS["m"],
                                    predictor=dict(NARS["predictor"]), stage3=dict(NARS["stage3"]),
                                    spearman_at=tuple(n for n in (50, 100) if n < top), winners=NARS["winners"],
                                    local_fraction=s2.local_fraction, local_parents=s2.local_parents)
            if pool is None:
                pool = sobol_pool(table, settings.pool_n, seed * 7919 + 1)
            stage1 = pretrained_predictor(table, pool, settings, seed).to_bytes()
            res = nars(table, budgets, seed, settings, stage1=stage1, pool=pool)
            out["methods"][method] = {
                "results": {b: best_after(res.logs[b].best_so_far(), b) for b in budgets},
                "curve": res.logs[top].best_so_far().tolist(), "spearman": res.spearman}
        out["seconds"][method] = time.process_time() - t0
    return out


def queries_to(curve: Sequence[float], target: float) -> float:
    hit = np.nonzero(np.asarray(curve) >= target - 1e-9)[0]
    return float(hit[0] + 1) if len(hit) else float("inf")


def summarise(runs: List[Dict[str, Any]], datasets: Sequence[str], methods: Sequence[str], budgets: Sequence[int],
              table_path: str) -> tuple:
    results: Dict[str, Any] = {"datasets": {}}
    details: Dict[str, Any] = {"datasets": {}}
    for ds in datasets:
        table = _table(table_path, ds)
        target = float(np.quantile(table.acc, TARGET_QUANTILE))
        mine = [r for r in runs if r["dataset"] == ds]
        entry: Dict[str, Any] = {"optimum": table.optimum, "methods": {}}
        extra: Dict[str, Any] = {"target": target, "target_quantile": TARGET_QUANTILE, "curves": {},
                                 "spearman": {}, "queries_to_target": {}, "seconds": {}}
        for m in methods:
            entry["methods"][m] = {}
            for b in budgets:
                vals = np.array([r["methods"][m]["results"][b] for r in mine], dtype=float)
                entry["methods"][m][str(b)] = {"mean": float(vals.mean()), "std": float(vals.std()), "n": int(len(vals))}
            curves = [r["methods"][m]["curve"] for r in mine]
            n = min(len(c) for c in curves)
            arr = np.array([c[:n] for c in curves])
            extra["curves"][m] = {"mean": arr.mean(0).tolist(), "std": arr.std(0).tolist(), "n": len(curves)}
            q = np.array([queries_to(c, target) for c in curves])
            reached = np.isfinite(q)
            extra["queries_to_target"][m] = {
                "median": float(np.median(q)) if reached.mean() > 0.5 else None,
                "mean_of_reached": float(q[reached].mean()) if reached.any() else None,
                "reached": float(reached.mean()), "within": int(n)}
            if m.startswith("nars"):
                for labels in (50, 100):
                    vals = [r["methods"][m]["spearman"].get(labels) for r in mine]
                    vals = [v for v in vals if v is not None]
                    if vals:
                        extra["spearman"].setdefault(m, {})[str(labels)] = {"mean": float(np.mean(vals)),
                                                                          "std": float(np.std(vals)), "n": len(vals)}
            extra["seconds"][m] = float(sum(r["seconds"][m] for r in mine))
        results["datasets"][ds] = entry
        details["datasets"][ds] = extra
    return results, details


def markdown(results: Dict[str, Any], details: Dict[str, Any], methods: Sequence[str], budgets: Sequence[int],
             wall: float, workers: int) -> str:
    L = ["# NAS-Bench-201: best test accuracy found after B queries (mean ± std over seeds)", ""]
    for ds, entry in results["datasets"].items():
        ex = details["datasets"][ds]
        n = entry["methods"][methods[0]][str(budgets[0])]["n"]
        L += [f"## {ds} (optimum {entry['optimum']:.2f}; {n} seeds)", "",
              "| method | " + " | ".join(f"B={b}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
        for m in methods:
            cells = [f"{entry['methods'][m][str(b)]['mean']:.2f} ± {entry['methods'][m][str(b)]['std']:.2f}"
                     for b in budgets]
            L.append(f"| {m} | " + " | ".join(cells) + " |")
        if ex["spearman"]:
            L += ["", "Predictor Spearman on every unqueried architecture (mean over seeds):", ""]
            for m, by in ex["spearman"].items():
                L.append(f"- {m}: " + ", ".join(f"after {k} labels {v['mean']:.3f} ± {v['std']:.3f}"
                                                for k, v in by.items()))
        L += ["", f"Queries to reach {ex['target']:.2f} (the top {100 * (1 - ex['target_quantile']):.1f}% of the "
                  f"table), within {max(budgets)} queries:", ""]
        for m in methods:
            q = ex["queries_to_target"][m]
            med = "not reached by half the seeds" if q["median"] is None else f"median {q['median']:.0f}"
            L.append(f"- {m}: {med}; reached by {100 * q['reached']:.0f}% of seeds")
        L.append("")
    L.append(f"Wall time {wall:.0f} s with {workers} worker processes; {details.get('cpu_seconds', 0):.0f} "
             "CPU seconds in the methods.")
    return "\n".join(L) + "\n"


def plot(results: Dict[str, Any], details: Dict[str, Any], methods: Sequence[str], out_dir: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fbnet_zoo.search.report import save_figure

    files = []
    for ds, entry in results["datasets"].items():
        ex = details["datasets"][ds]
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for m in methods:
            c = ex["curves"][m]
            mean, std = np.array(c["mean"]), np.array(c["std"])
            se = std / np.sqrt(max(c["n"], 1))
            x = np.arange(1, len(mean) + 1)
            line, = ax.plot(x, mean, label=m)
            ax.fill_between(x, mean - se, mean + se, color=line.get_color(), alpha=0.2)
            budgets = sorted(int(b) for b in entry["methods"][m])
            ax.scatter(budgets, [entry["methods"][m][str(b)]["mean"] for b in budgets], color=line.get_color(), s=14)
        ax.axhline(entry["optimum"], color="k", ls=":", lw=0.8, label=f"optimum {entry['optimum']:.2f}")
        lo = min(np.array(ex["curves"][m]["mean"])[min(19, len(ex["curves"][m]["mean"]) - 1)] for m in methods)
        ax.set_ylim(lo - 0.3, entry["optimum"] + 0.15)
        ax.set_xlabel("queries (architectures evaluated)")
        ax.set_ylabel(f"best test accuracy so far (%), {ds}")
        ax.set_title(f"NAS-Bench-201 {ds}: mean over seeds, band = ±1 s.e.; dots = result at each budget")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=8, loc="lower right")
        files.append(save_figure(fig, os.path.join(out_dir, f"{ds}.png"), dpi=100))
    return files


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", default=None, help="CSV with arch + <dataset>_test_acc columns (default: packaged)")
    p.add_argument("--dataset", nargs="+", default=None, help="datasets (default: every column of the table)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--budgets", default="20,50,100,150")
    p.add_argument("--seeds", type=int, default=100)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "nas_bench_201"))
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--write-every", type=int, default=10, help="write partial results every N seeds")
    p.add_argument("--quick", action="store_true", help="2 seeds, budgets 20,50 (the tests' run)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from fbnet_zoo.io_utils import atomic_write_text
    from fbnet_zoo.search.tabular import TableError, csv_datasets, packaged_table

    table = args.table or packaged_table()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        print(f"error: --methods: {bad or methods} not among {list(METHODS)}", file=sys.stderr)
        return 2
    try:
        budgets = sorted({int(b) for b in args.budgets.split(",")})
    except ValueError:
        print(f"error: --budgets: {args.budgets!r} is not a comma-separated list of integers", file=sys.stderr)
        return 2
    seeds = args.seeds
    if args.quick:
        seeds, budgets = 2, [20, 50]
    if seeds < 1 or budgets[0] < 2:
        print("error: --seeds must be >= 1 and every budget >= 2", file=sys.stderr)
        return 2
    try:
        datasets = args.dataset or csv_datasets(table)
        for ds in datasets:
            _table(table, ds)
    except TableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # seed-major order: partial results (written every --write-every seeds) cover every dataset alike
    jobs = [{"table": table, "dataset": ds, "seed": s, "budgets": budgets, "methods": methods}
            for s in range(seeds) for ds in datasets]
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    from tqdm import tqdm

    runs: List[Dict[str, Any]] = []

    s2 = _config(datasets[0]).stage2

    def write(final: bool) -> str:
        wall = time.perf_counter() - t0
        results, details = summarise(runs, datasets, methods, budgets, table)
        details.update({"wall_seconds": wall, "workers": args.workers, "seeds": seeds, "budgets": budgets,
                        "complete": final, "cpu_seconds": sum(sum(r["seconds"].values()) for r in runs),
                        "table": table, "rea": REA, "cpu_count": os.cpu_count(),
                        "nars": {**NARS, "local_fraction": s2.local_fraction, "local_parents": s2.local_parents}})
        atomic_write_text(os.path.join(args.out, "results.json"), json.dumps(results, indent=1))
        atomic_write_text(os.path.join(args.out, "details.json"), json.dumps(details, indent=1))
        md = markdown(results, details, methods, budgets, wall, args.workers)
        if not final:
            md += f"\nPartial: {len(runs)} of {len(jobs)} (dataset, seed) runs finished.\n"
        atomic_write_text(os.path.join(args.out, "results.md"), md)
        plot(results, details, methods, args.out)
        return md

    every = max(1, args.write_every) * len(datasets)
    if args.workers > 1:
        with mp.get_context("fork").Pool(args.workers) as pool:
            for r in tqdm(pool.imap(run_seed, jobs), total=len(jobs), desc="nas_bench_201", unit="run"):
                runs.append(r)
                if len(runs) % every == 0 and len(runs) < len(jobs):
                    write(False)
    else:
        for j in tqdm(jobs, desc="nas_bench_201", unit="run"):
            runs.append(run_seed(j))
    print(write(True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
