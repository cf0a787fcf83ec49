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
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from fbnet_zoo.cifar import ResultsError, load_results, results_table
from fbnet_zoo.io_utils import atomic_path, atomic_write_text

logger = logging.getLogger("plot_cifar10")


def _final(row: Dict[str, Any]) -> Optional[float]:
    return row.get("final_top1") if row.get("status") == "ok" else None


def plot(rows: Sequence[Dict[str, Any]], out: str, title: str = "CIFAR-10 transfer") -> int:
    """Write the accuracy-vs-MFLOPs figure; returns the number of points plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        if _final(r) is not None:
            families.setdefault(r.get("family", "other"), []).append(r)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    markers = ["o", "s", "^", "D", "v", "P"]
    n = 0
    for i, (family, members) in enumerate(sorted(families.items())):
        members.sort(key=lambda r: r["flops"])
        xs = [r["flops"] / 1e6 for r in members]
        ys = [_final(r) for r in members]
        ax.plot(xs, ys, marker=markers[i % len(markers)], label=family)
        for r, x, y in zip(members, xs, ys):
            ax.annotate(r.get("label") or r["arch"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        n += len(members)
    ax.set_xlabel("MFLOPs (fvcore, at the CIFAR input size)")
    ax.set_ylabel("CIFAR-10 top-1 (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if families:
        ax.legend()
    try:
        with atomic_path(out, suffix=os.path.splitext(out)[1]) as tmp:  # savefig picks the format by extension
            fig.savefig(tmp, dpi=150, bbox_inches="tight")
    finally:
        plt.close(fig)
    return n


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
    if args.table:
        atomic_write_text(args.table, table + "\n")
    n = plot(rows, args.out, args.title)
    print(f"plotted {n} finished run(s) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
