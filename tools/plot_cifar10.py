#!/usr/bin/env python
"""Accuracy vs FLOPs on CIFAR-10 (like Fig. 7 of the FBNetV3 paper) from the results JSONs
written by tools/train_cifar10.py.

    python tools/plot_cifar10.py runs/cifar10 --out cifar10.png --table cifar10.md

Arguments are results files or folders (searched recursively for ``results.json``). One
line per family (FBNetV3 variants, EfficientNet baselines, ...), points sorted by FLOPs,
each labelled with its model. Failed or unfinished runs are listed in the table but not
plotted. Prints the table (markdown) and writes it with ``--table``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from fbnet_zoo.io_utils import atomic_write_text
from fbnet_zoo.training.cifar10 import ResultsError, load_results, plot_results, results_table

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results.json files or folders holding them")
    parser.add_argument("--out", default="cifar10_accuracy_vs_flops.png", help="figure path (.png/.pdf/.svg)")
    parser.add_argument("--table", default=None, help="also write the markdown table here")
    parser.add_argument("--title", default="CIFAR-10 transfer")
    args = parser.parse_args(argv)
    try:
        rows = load_results(args.results)
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: no results.json found under {args.results}", file=sys.stderr)
        return 2
    table = results_table(rows)
    print(table)
    writing = args.out
    try:  # the figure first: an unknown --out format writes nothing
        n = plot_results(rows, args.out, args.title)
        if args.table:
            writing = args.table
            atomic_write_text(args.table, table + "\n")
    except ValueError as e:  # matplotlib: an unknown format
        print(f"error: --out {args.out}: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a folder, a missing parent that cannot be made, no permission
        print(f"error: {writing}: cannot be written ({e.strerror or e})", file=sys.stderr)
        return 2
    print(f"plotted {n} finished run(s) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
