"""Does predictor pretraining (stage 1) save labelled samples? MSE and rank correlation of
the accuracy predictor vs the number of labelled candidates, with and without pretraining.

Two sources of labels, both reported:
- ``oracle``: the ImageNet (Table 2) space with the synthetic oracle's accuracies (cheap, so
  the sample-count sweep can go wide); pretraining on a pool of ``--pool`` candidates.
- ``trained``: candidates actually trained on the embedded task, read from the stores of
  finished search runs (``--runs DIR ...``, e.g. the embedded default's run dir); the
  pretrained encoder is that run's stage-1 checkpoint; held-out candidates score the fit.

The paper (Fig. 4e) saw about 5x fewer samples for the same MSE with pretraining.

    python benchmarks/predictor_pretraining.py [--pool 20000] [--runs runs/default ...]
Writes benchmarks/results/predictor_pretraining.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def sweep(x_pool, flops, params, x_lab, y_lab, sizes, repeats, pcfg, pretrained_blob=None, n_test=None):
    from fbnet_zoo.search.predictor import Predictor, rank_corr

    if pretrained_blob is None:
        pre = Predictor.from_config(x_pool.shape[1], pcfg, seed=0)
        pre.pretrain(x_pool, flops, params, seed=1)
        pretrained_blob = pre.to_bytes()
    out = []
    n_all = len(y_lab)
    for n in sizes:
        for variant in ("pretrained", "scratch"):
            mses, corrs = [], []
            for r in range(repeats):
                g = np.random.default_rng(1000 * r + n)
                order = g.permutation(n_all)
                tr = order[:n]
                te = order[n:] if n_test is None else order[n:n + n_test]
                if len(te) < 3:
                    continue
                if variant == "pretrained":
                    p = Predictor.from_bytes(pretrained_blob, pcfg)
                else:
                    p = Predictor.from_config(x_lab.shape[1], pcfg, seed=r)
                p.refit(x_lab[tr], y_lab[tr], seed=r)
                pred = p.predict(x_lab[te])
                std = y_lab.std() + 1e-9
                mses.append(float((((pred - y_lab[te]) / std) ** 2).mean()))
                corrs.append(rank_corr(pred, y_lab[te], "spearman"))
            if mses:
                out.append({"labelled": n, "variant": variant, "mse": float(np.mean(mses)),
                            "spearman": float(np.nanmean(corrs)), "repeats": len(mses)})
    return out


def sample_savings(rows):
    """For each scratch point (n, MSE): the pretrained sample count reaching that MSE,
    log-linearly interpolated between the measured sizes (None if never reached)."""
    pre = sorted((r["labelled"], r["mse"]) for r in rows if r["variant"] == "pretrained")
    out = []
    for r in sorted((r for r in rows if r["variant"] == "scratch"), key=lambda r: r["labelled"]):
        need = None
        for (n0, m0), (n1, m1) in zip([(pre[0][0], pre[0][1])] + pre[:-1], pre):
            if m1 <= r["mse"]:
                if m0 <= r["mse"] or n0 == n1:
                    need = float(n1) if m0 > r["mse"] or n0 == n1 else float(n0)
                else:
                    t = (m0 - r["mse"]) / (m0 - m1)
                    need = float(np.exp(np.log(n0) + t * (np.log(n1) - np.log(n0))))
                break
        out.append({"scratch": r["labelled"], "scratch_mse": r["mse"], "pretrained": need,
                    "ratio": (r["labelled"] / need) if need else None})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", type=int, default=20000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runs", nargs="*", default=[])
    args = ap.parse_args()

    from fbnet_zoo.search.config import load_config
    from fbnet_zoo.search.encoding import Encoder
    from fbnet_zoo.search.oracle import Oracle
    from fbnet_zoo.search.pool import build_pool

    result = {"oracle": None, "trained": []}
    t0 = time.perf_counter()
    cfg = load_config("imagenet_fbnetv3")
    space = cfg.search_space
    enc = Encoder(space)
    pool = build_pool(space, args.pool, seed=3, window=cfg.pool)
    x = enc.encode_units(pool.units)
    oracle = Oracle(space, seed=0)
    n_lab = max(args.sizes) + 1000
    y = np.array([oracle.final_top1(v) for v in pool.values[:n_lab]])
    rows = sweep(x, pool.flops, pool.params, x[:n_lab], y, args.sizes, args.repeats, cfg.predictor, n_test=1000)
    result["oracle"] = {"space": "imagenet_fbnetv3", "pool": len(pool), "rows": rows,
                        "seconds": time.perf_counter() - t0}
    print("oracle labels on the ImageNet space (MSE in units of the accuracy std, 1000 held out):")
    print(f"{'labelled':>9s} {'pretrained MSE':>15s} {'scratch MSE':>12s} {'pre rho':>8s} {'scratch rho':>11s}")
    for n in args.sizes:
        a = next(r for r in rows if r["labelled"] == n and r["variant"] == "pretrained")
        b = next(r for r in rows if r["labelled"] == n and r["variant"] == "scratch")
        print(f"{n:9d} {a['mse']:15.3f} {b['mse']:12.3f} {a['spearman']:8.3f} {b['spearman']:11.3f}")
    savings = sample_savings(rows)
    result["oracle"]["sample_savings"] = savings
    print("labelled samples the pretrained predictor needs for the scratch predictor's MSE "
          "(log-interpolated): " + ", ".join(f"{s['scratch']} -> {s['pretrained']:.0f} ({s['ratio']:.2f}x)"
                                              for s in savings if s["pretrained"] is not None))

    from fbnet_zoo.search.runner import SearchRun

    for run_dir in args.runs:
        run = SearchRun(None, run_dir, resume=True)
        try:
            rows_ok = run.store.candidates(status="ok")
            e = run.target_epoch()
            if len(rows_ok) < 6:
                print(f"{run_dir}: only {len(rows_ok)} trained candidates; skipped")
                continue
            run.build_pool()
            xl, yl = run.labelled(rows_ok, e)
            sizes = [s for s in (3, 5, 8, 12, 16, 24, 32, 40) if s <= len(rows_ok) - 6]
            rws = sweep(run.pool_features, run.pool.flops, run.pool.params, xl, yl, sizes, 5, run.cfg.predictor,
                        pretrained_blob=run.store.load_checkpoint("stage1"))
            result["trained"].append({"run_dir": run_dir, "mode": run.cfg.mode, "candidates": len(rows_ok),
                                      "target_epoch": e,
                                      "top1_range": [float(yl.min()), float(yl.max())], "rows": rws})
            print(f"\ncandidates trained on the embedded task ({run_dir}, {run.cfg.mode}: {len(rows_ok)}, top-1 "
                  f"{yl.min():.1f}..{yl.max():.1f}):")
            for n in sizes:
                a = next(r for r in rws if r["labelled"] == n and r["variant"] == "pretrained")
                b = next(r for r in rws if r["labelled"] == n and r["variant"] == "scratch")
                print(f"{n:9d} {a['mse']:15.3f} {b['mse']:12.3f} {a['spearman']:8.3f} {b['spearman']:11.3f}")
        finally:
            run.close()
    from fbnet_zoo.io_utils import atomic_write_text

    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "predictor_pretraining.json")
    atomic_write_text(out, json.dumps(result, indent=1, default=float) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
