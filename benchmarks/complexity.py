#!/usr/bin/env python3
"""Analytic counter vs fvcore tracing, on the same random specs, in one run.

Goals (issue 2): >= 1000x faster per spec than fvcore; 20,000 random specs counted
(FLOPs + params) in <= 20 s on a 2-core machine. Writes benchmarks/results/complexity.json.

    python benchmarks/complexity.py [--n 20000] [--n-fvcore 30]
"""

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

import fbnet_zoo
from fbnet_zoo.io_utils import atomic_write_text
from fbnet_zoo.random_specs import random_spec

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=20000, help="specs for the analytic counter")
    p.add_argument("--n-fvcore", type=int, default=30, help="specs traced with fvcore (slow)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(args.seed)
    specs = []
    while len(specs) < args.n:
        s = random_spec(rng, name=f"r{len(specs)}", input_size=224)
        try:
            fbnet_zoo.complexity(s)
        except fbnet_zoo.SpecError:  # too many strides for 224 px: draw again
            continue
        specs.append(s)

    t0 = time.perf_counter()
    analytic = [fbnet_zoo.complexity(s) for s in specs]
    t_analytic = time.perf_counter() - t0

    t_fv, mismatches = 0.0, 0
    for s, a in zip(specs[: args.n_fvcore], analytic):
        model = fbnet_zoo.FBNet(s)  # building is not part of fvcore's time; tracing is
        t0 = time.perf_counter()
        f = fbnet_zoo.fvcore_flops(model)
        t_fv += time.perf_counter() - t0
        mismatches += f != a.flops
    per_analytic = t_analytic / args.n
    per_fvcore = t_fv / args.n_fvcore
    result = {
        "n_specs_analytic": args.n,
        "analytic_total_s": round(t_analytic, 3),
        "analytic_ms_per_spec": round(per_analytic * 1e3, 4),
        "n_specs_fvcore": args.n_fvcore,
        "fvcore_ms_per_spec": round(per_fvcore * 1e3, 2),
        "speedup_x": round(per_fvcore / per_analytic, 1),
        "fvcore_mismatches": mismatches,
        "goals": {"speedup_x>=1000": per_fvcore / per_analytic >= 1000, "20k_specs_s<=20": per_analytic * 20000 <= 20},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
    }
    print(f"{'counter':<12} {'specs':>7} {'ms/spec':>10}")
    print(f"{'analytic':<12} {args.n:>7} {per_analytic * 1e3:>10.4f}")
    print(f"{'fvcore':<12} {args.n_fvcore:>7} {per_fvcore * 1e3:>10.2f}")
    print(f"speed-up: {result['speedup_x']}x; 20K specs: {per_analytic * 20000:.2f} s; fvcore mismatches: {mismatches}")
    atomic_write_text(os.path.join(RESULTS, "complexity.json"), json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
