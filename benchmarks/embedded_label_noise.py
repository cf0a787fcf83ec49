"""How much architecture signal do a search config's labels carry? Train a fixed set of
candidates twice, with two training seeds, and compare.

The candidates are the first ``--candidates`` of the config's Sobol pool (what round 1 of
stage 2 trains); each is trained for the config's full epochs with ``train.seed`` = each of
``--seeds`` (model init, data order, augmentation, mixup), on the same data. Reported:

- ``seed_spearman``: rank correlation of the candidates' top-1 between the two seeds (the
  best any predictor can hope to rank them at);
- ``seed_std``: the per-candidate standard deviation of top-1 caused by the seed alone
  (pooled over candidates: std of the seed-to-seed difference / sqrt 2);
- ``spread_std``: the standard deviation of the seed-averaged top-1 over candidates (the
  signal a predictor has to find).

    python benchmarks/embedded_label_noise.py [CONFIG] [key=value ...] [--candidates 16] [--seeds 0 1]
        [--name NAME] [--cache FILE]
Writes benchmarks/results/embedded_label_noise.json (one entry per ``--name``, default the
config name). ``--cache``: a JSON-lines file of finished trainings (config digest, seed,
candidate, top-1), read first and appended to, so an interrupted measurement continues.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", default="default")
    ap.add_argument("overrides", nargs="*", default=[])
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs=2, default=[0, 1])
    ap.add_argument("--name", default=None)
    ap.add_argument("--cache", default=None)
    args = ap.parse_args()

    from fbnet_zoo.io_utils import atomic_write_text
    from fbnet_zoo.search.candidate import Candidate
    from fbnet_zoo.search.config import config_digest, load_config
    from fbnet_zoo.search.pool import build_pool
    from fbnet_zoo.search.predictor import rank_corr
    from fbnet_zoo.search.runner import SearchRun
    from fbnet_zoo.search.trainer import train_candidate

    cfg = load_config(args.config, args.overrides)
    space = cfg.search_space
    pool = build_pool(space, max(cfg.pool.n, args.candidates), SearchRun._pool_seed(cfg), cfg.pool,
                      cfg.pool.max_draw_factor)
    epochs = int(cfg.stage2.epochs or space.base_recipe.epochs)
    base = cfg.train_settings()
    cands = []
    for i in range(args.candidates):
        arch, recipe = space.build(pool.values[i], name=f"cand_{pool.keys[i]}")
        cands.append(Candidate(pool.keys[i], arch, recipe))
    digest = config_digest(cfg)
    done = {}
    if args.cache and os.path.exists(args.cache):
        with open(args.cache) as f:
            for line in f:
                r = json.loads(line)
                if r["config"] == digest:
                    done[(r["seed"], r["key"])] = r["top1"]
    top1 = np.zeros((len(args.seeds), len(cands)))
    t0, trained = time.perf_counter(), 0
    for si, seed in enumerate(args.seeds):
        settings = base.replace(seed=seed, checkpoint=False)
        for ci, cand in enumerate(cands):
            if (seed, cand.key) in done:
                top1[si, ci] = done[(seed, cand.key)]
                continue
            res = train_candidate(cand, epochs, settings, progress=False)
            trained += 1
            top1[si, ci] = res.final_top1 if res.ok else np.nan
            print(f"seed {seed} candidate {ci:2d} ({cand.key}): top-1 {top1[si, ci]:.2f}", flush=True)
            if args.cache:
                with open(args.cache, "a") as f:
                    f.write(json.dumps({"config": digest, "seed": seed, "key": cand.key,
                                        "top1": float(top1[si, ci])}) + "\n")
    seconds = time.perf_counter() - t0
    ok = np.isfinite(top1).all(0)
    a, b = top1[0, ok], top1[1, ok]
    out = {
        "config": args.config, "overrides": args.overrides, "candidates": int(ok.sum()), "epochs": epochs,
        "seeds": args.seeds, "seed_spearman": rank_corr(a, b, "spearman"),
        "seed_std": float(np.std(a - b, ddof=1) / np.sqrt(2)), "spread_std": float(np.std((a + b) / 2, ddof=1)),
        "top1_range": [float(min(a.min(), b.min())), float(max(a.max(), b.max()))],
        "mean_top1": float((a.mean() + b.mean()) / 2),
        "train_seconds_per_candidate": seconds / trained if trained else None,
        "top1": top1.tolist(),
    }
    print(json.dumps({k: v for k, v in out.items() if k != "top1"}, indent=1))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "embedded_label_noise.json")
    results = {}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    results[args.name or args.config] = out
    atomic_write_text(path, json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
