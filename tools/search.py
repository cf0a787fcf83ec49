#!/usr/bin/env python
"""Neural Architecture-Recipe Search (FBNetV3's NARS), all three stages.

    python tools/search.py                                   # the embedded default, end to end
    python tools/search.py imagenet_fbnetv3 train.data_dir=/data/imagenet --executor ray --ray-address auto
    python tools/search.py my_search.yaml stage2.m=16 seed=3 --constraints "flops<=450M" "flops<=550M"
    python tools/search.py --resume runs/default             # continue a killed run
    python tools/search.py cifar10 --stage 1                 # one stage (later: --resume DIR --stage 2)
    python tools/search.py nas_bench_201 bench.dataset=cifar100   # NAS-Bench-201 cells, table look-ups

Exit status: 0 done, 2 a bad config / arguments / run dir, 3 the run stopped (nothing measured
in a round, candidates failed because of the environment: fix it and --resume; the run dir is
locked by another process; its store is unreadable), 130 interrupted.

CONFIG is a YAML file or a shipped config (default, cifar10, imagenet_fbnetv3, nas_bench_201); KEY=VALUE
items override dotted keys (values parsed as YAML). Winners land in RUN_DIR/archs and
RUN_DIR/recipes, are registered for build_model(), and with --install-dir are copied into a
user arch dir (fbnet_zoo.register_arch_dir / FBNET_ZOO_ARCH_DIRS).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE",
                   help="config file or shipped name (first, optional), then dotted overrides")
    p.add_argument("--run-dir", help="run directory (default: runs/<config name>, numbered if taken)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--executor", metavar="KIND", help="where candidates train: a registered executor kind "
                   "(local, ray, oracle, ...)")
    p.add_argument("--ray-address", help="Ray cluster address (e.g. auto); implies --executor ray")
    p.add_argument("--constraints", nargs="+", metavar="C", help="stage-3 constraints, e.g. 'flops<=450M' "
                   "'flops<=550M&params<=9M' (replaces the config's)")
    p.add_argument("--stage", type=int, action="append", choices=[1, 2, 3], help="run only this stage (repeatable)")
    p.add_argument("--install-dir", help="also copy the winning archs into this user arch dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_intermixed_args(argv)  # overrides may follow options: CONFIG --executor oracle KEY=VALUE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")

    from fbnet_zoo.search.config import SearchConfigError, SearchRunError, load_config
    from fbnet_zoo.search.executors import executor_kinds
    from fbnet_zoo.search.runner import run_search, stored_config

    config_path = None
    overrides = []
    for i, item in enumerate(args.items):
        if "=" in item:
            overrides.append(item)
        elif i == 0:
            config_path = item
        else:
            print(f"error: {item!r}: the config must come first; later items must be KEY=VALUE", file=sys.stderr)
            return 2
    if args.ray_address and not args.executor:
        args.executor = "ray"
    if args.executor is not None and args.executor not in executor_kinds():
        print(f"error: --executor: {args.executor!r} is not a registered executor kind; registered: "
              f"{executor_kinds()}", file=sys.stderr)
        return 2
    run_dir = args.resume or args.run_dir
    try:
        cfg = None
        if args.resume:
            run_dir = args.resume
            if config_path or overrides or args.constraints:  # else the run's stored config as it is
                # overrides without a config file edit the run's own config (e.g. corrected constraints)
                base = None if config_path else stored_config(run_dir)
                cfg = load_config(config_path, overrides, args.constraints, base=base)
        else:
            cfg = load_config(config_path, overrides, args.constraints)
            run_dir = args.run_dir or _fresh_dir(os.path.join("runs", cfg.name))
        stages = tuple(sorted(set(args.stage))) if args.stage else (1, 2, 3)
        summary = run_search(cfg, run_dir, resume=bool(args.resume), stages=stages, progress=not args.no_progress,
                             executor_kind=args.executor, ray_address=args.ray_address,
                             install_dir=args.install_dir)
    except SearchConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SearchRunError as e:  # the run stopped: nothing measured, environment failures, locked or broken store
        print(f"error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: python tools/search.py --resume {run_dir}", file=sys.stderr)
        return 130
    print(f"run dir: {summary['run_dir']}")
    for k, v in summary.get("timings", {}).items():
        print(f"  {k}: {v:.1f} s")
    for o in summary.get("outputs", []):
        print(f"  {o['name']}: {o['flops'] / 1e6:.2f} MFLOPs, {o['params'] / 1e6:.3f} M params ({o['origin']})")
        print(f"    arch {o['arch_yaml']}" + (f"\n    recipe {o['recipe_yaml']}" if o.get("recipe_yaml") else ""))
    if "report" in summary:
        print(f"report: {summary['report']['markdown']}")
    return 0


def _fresh_dir(base: str) -> str:
    if not os.path.exists(base):
        return base
    i = 2
    while os.path.exists(f"{base}_{i}"):
        i += 1
    return f"{base}_{i}"


if __name__ == "__main__":
    sys.exit(main())
