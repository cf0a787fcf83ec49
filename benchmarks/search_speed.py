"""Search speed on the ImageNet (Table 2) space: stage 1 on a 20K pool (labelling +
predictor pretraining) and stage 3 (adaptive GA) per constraint.

Peers measured in the same run: labelling through the memoised row-cost walk vs calling
fbnet_zoo.count_flops + count_params per candidate (on a subset), and the predictor on one
thread (what the search uses) vs torch's default thread count.

    python benchmarks/search_speed.py [--n 20000] [--quick]
Writes benchmarks/results/search_speed.json. Goals: stage 1 <= 60 s, stage 3 <= 10 s per constraint.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--quick", action="store_true", help="n=2000, for a smoke run")
    args = ap.parse_args()
    n = 2000 if args.quick else args.n

    import scipy.stats  # noqa: F401  (import cost outside the timings)

    from fbnet_zoo import count_flops, count_params
    from fbnet_zoo.search.config import load_config
    from fbnet_zoo.search.encoding import Encoder
    from fbnet_zoo.search.evolution import AdaptiveGA
    from fbnet_zoo.search.oracle import Oracle
    from fbnet_zoo.search.pool import build_pool, sobol_points
    from fbnet_zoo.search.predictor import Predictor, single_thread

    cfg = load_config("imagenet_fbnetv3")
    space = cfg.search_space
    enc = Encoder(space)
    rows = []

    t0 = time.perf_counter()
    pool = build_pool(space, n, seed=1, window=cfg.pool, max_draw_factor=cfg.pool.max_draw_factor)
    t_label = time.perf_counter() - t0
    x = enc.encode_units(pool.units)
    per_label = t_label / pool.drawn

    # peer: the plain counter on 1000 drawn points (spec built the same way)
    pts = sobol_points(space.ndim, 1000, seed=2)
    vals, _ = space.decode_batch(pts)
    t0 = time.perf_counter()
    for v in vals:
        a = space.build_arch(v)
        count_flops(a, None, 1000)
        count_params(a, 1000)
    per_plain = (time.perf_counter() - t0) / len(vals)

    pred = Predictor.from_config(enc.width, cfg.predictor, seed=0)
    t0 = time.perf_counter()
    rep = pred.pretrain(x, pool.flops, pool.params, seed=1)
    t_pre = time.perf_counter() - t0
    stage1 = t_label + t_pre
    rows.append(("stage 1: label pool", f"{len(pool)} kept of {pool.drawn} drawn", t_label))
    rows.append(("stage 1: pretrain", f"{cfg.predictor.pretrain_epochs} epochs, val MSE {rep.val_mse:.4f}, "
                 f"rank corr FLOPs {rep.val_rank_corr['flops']:.3f}", t_pre))
    rows.append(("stage 1 total", "goal <= 60 s", stage1))

    # peer for the thread choice: 3 pretraining epochs with torch's default threads
    p2 = Predictor.from_config(enc.width, cfg.predictor, seed=0)
    t0 = time.perf_counter()
    with single_thread():
        p2.pretrain.__wrapped__(p2, x, pool.flops, pool.params, seed=1, epochs=3)
    t_one = time.perf_counter() - t0
    threads = torch.get_num_threads()
    p3 = Predictor.from_config(enc.width, cfg.predictor, seed=0)
    t0 = time.perf_counter()
    p3.pretrain.__wrapped__(p3, x, pool.flops, pool.params, seed=1, epochs=3)
    t_multi = time.perf_counter() - t0

    # stage 3: refit on a stage-2-sized oracle sample, then one GA run per constraint
    oracle = Oracle(space, seed=0)
    m = cfg.stage2.budget
    y = np.array([oracle.final_top1(v) for v in pool.values[:m]])
    pred.refit(x[:m], y, seed=0)
    scores = pred.predict(x)
    ga = AdaptiveGA(space, pred, enc, cfg.stage3)
    s3 = []
    for c in cfg.stage3.constraints:
        seeds = [pool.units[i] for i in np.argsort(-scores) if pool.flops[i] <= c["flops"]][:16]
        t0 = time.perf_counter()
        res = ga.run(c, seeds, seed=0)
        dt = time.perf_counter() - t0
        true = oracle.final_top1(res.best.values)
        s3.append({"constraint": c, "seconds": dt, "generations": res.generations, "evaluated": res.evaluated,
                   "best_flops": res.best.flops, "predicted": res.best.score, "oracle": true})
        rows.append((f"stage 3: flops<={c['flops'] / 1e6:g}M", f"{res.generations} gens, {res.evaluated} children, "
                     f"winner {res.best.flops / 1e6:.0f}M", dt))

    print(f"{'step':34s} {'detail':64s} {'seconds':>8s}")
    for name, detail, sec in rows:
        print(f"{name:34s} {detail:64s} {sec:8.2f}")
    print(f"labelling: {per_label * 1e3:.3f} ms/candidate memoised vs {per_plain * 1e3:.3f} ms plain "
          f"count_flops+count_params ({per_plain / per_label:.1f}x)")
    print(f"pretrain 3 epochs: {t_one:.2f} s on 1 thread vs {t_multi:.2f} s on {threads} threads "
          f"({t_multi / t_one:.2f}x)")
    out = {"n": len(pool), "drawn": pool.drawn, "label_seconds": t_label, "pretrain_seconds": t_pre,
           "stage1_seconds": stage1, "stage1_goal_seconds": 60, "val_mse": rep.val_mse, "val_rank_corr": rep.val_rank_corr,
           "label_ms_memoised": per_label * 1e3, "label_ms_plain": per_plain * 1e3,
           "label_speedup": per_plain / per_label, "pretrain3_one_thread_s": t_one,
           "pretrain3_default_threads_s": t_multi, "default_threads": threads, "stage3": s3,
           "stage3_goal_seconds_per_constraint": 10, "cpu_count": os.cpu_count(),
           "load_avg": os.getloadavg()}
    from fbnet_zoo.io_utils import atomic_write_text

    name = "search_speed_quick.json" if args.quick else "search_speed.json"
    atomic_write_text(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", name),
                      json.dumps(out, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
