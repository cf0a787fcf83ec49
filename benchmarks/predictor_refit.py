"""Which stage-2 refit (model or schedule) ranks held-out candidates best? 5-fold cross-validated
Spearman of the refit predictor over the trained candidates of finished search runs (the
same metric as the run report's ``heldout.cross_validated``), for a few refit schedules, each
starting from the run's own stage-1 (pretrained) predictor, averaged over 4 fold splits.

    python benchmarks/predictor_refit.py --runs runs/default [...]
Writes benchmarks/results/predictor_refit.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import numpy as np

VARIANTS = {
    "frozen 40 + full 40 at lr x0.1 (the old default)": {"refit_frozen_epochs": 40, "refit_full_epochs": 40,
                                                          "refit_full_lr_factor": 0.1},
    "frozen 40 + full 40 at lr x1": {"refit_frozen_epochs": 40, "refit_full_epochs": 40, "refit_full_lr_factor": 1.0},
    "proxy_ridge (the embedded default's refit model)": {"refit_model": "proxy_ridge"},
    "full 80 at lr x1 (the MLP refit of the embedded default)": {"refit_frozen_epochs": 0, "refit_full_epochs": 80,
                                          "refit_full_lr_factor": 1.0},
    "full 80 at lr x0.5, batch 8": {"refit_frozen_epochs": 0, "refit_full_epochs": 80, "refit_full_lr_factor": 0.5,
                                    "refit_batch_size": 8},
    "full 40 at lr x1": {"refit_frozen_epochs": 0, "refit_full_epochs": 40, "refit_full_lr_factor": 1.0},
    "full 160 at lr x1": {"refit_frozen_epochs": 0, "refit_full_epochs": 160, "refit_full_lr_factor": 1.0},
    "full 80 at lr 1e-3": {"refit_frozen_epochs": 0, "refit_full_epochs": 80, "refit_full_lr_factor": 1.0,
                           "refit_lr": 1e-3},
    "full 80 at lr x1, weight decay 1e-2": {"refit_frozen_epochs": 0, "refit_full_epochs": 80,
                                            "refit_full_lr_factor": 1.0, "weight_decay": 1e-2},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--splits", type=int, default=4)
    args = ap.parse_args()

    from fbnet_zoo.io_utils import atomic_write_text
    from fbnet_zoo.search.predictor import Predictor, cross_validated_rank_corr
    from fbnet_zoo.search.runner import SearchRun

    out = []
    for run_dir in args.runs:
        run = SearchRun(None, run_dir, resume=True)
        try:
            rows = run.store.candidates(status="ok")
            e = run.target_epoch()
            x, y = run.labelled(rows, e)
            # runs made before stage 1 stored the recipe's feature columns: give them, so that
            # proxy_ridge sees the recipe there too
            pred = Predictor.from_bytes(run.store.load_checkpoint("stage1"), run.cfg.predictor)
            pred.columns = run.encoder.recipe_columns()
            blob = pred.to_bytes()
            entry = {"run_dir": run_dir, "candidates": len(rows), "target_epoch": e, "variants": {}}
            print(f"{run_dir}: {len(rows)} candidates, top-1 {y.min():.1f}..{y.max():.1f} at epoch {e}")
            for name, change in VARIANTS.items():
                pcfg = dataclasses.replace(run.cfg.predictor, **{"refit_model": "mlp", **change})
                rho = [cross_validated_rank_corr(blob, pcfg, x, y, 5, seed=s)["spearman"] for s in range(args.splits)]
                entry["variants"][name] = {"spearman_mean": float(np.mean(rho)), "spearman": rho}
                print(f"  {name:52s} 5-fold CV Spearman {np.mean(rho):.2f} ({', '.join(f'{r:.2f}' for r in rho)})")
            out.append(entry)
        finally:
            run.close()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "predictor_refit.json")
    atomic_write_text(path, json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
