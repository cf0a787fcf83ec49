"""Stage 2's early-stop epoch: the first epoch whose ranking of candidates agrees with the
ranking by final accuracy (Kendall's tau or Spearman's rho) at least ``threshold``."""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np

from .predictor import rank_corr


def rank_corr_by_epoch(curves: Sequence[Sequence[float]], method: str = "kendall") -> List[float]:
    """corr(top1 at epoch e, final top1) over candidates, for e = 1..E (complete curves only)."""
    curves = [list(c) for c in curves if len(c) > 0]
    if not curves:
        return []
    length = min(len(c) for c in curves)
    a = np.array([c[:length] for c in curves], dtype=float)
    final = np.array([c[-1] for c in curves], dtype=float)
    return [rank_corr(a[:, e], final, method) for e in range(length)]


def select_early_stop_epoch(curves: Sequence[Sequence[float]], threshold: float = 0.92,
                            method: str = "kendall") -> Tuple[int, List[float]]:
    """(e, correlations): the 1-based first epoch whose correlation >= threshold.

    With fewer than 3 curves, or none passing before the end, e is the full length."""
    corrs = rank_corr_by_epoch(curves, method)
    if not corrs:
        return 0, []
    full = len(corrs)
    if len(curves) < 3:
        return full, corrs
    for e, c in enumerate(corrs, start=1):
        if not math.isnan(c) and c >= threshold - 1e-12:
            return e, corrs
    return full, corrs
