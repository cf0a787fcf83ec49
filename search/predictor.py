"""The NARS predictor: an MLP encoder shared by a proxy head (FLOPs, params) and an
accuracy head.

Stage 1 pretrains encoder + proxy head on the pool's analytic statistics (log FLOPs, log
params, standardised; 80/20 split; validation MSE and rank correlation reported). Stage 2
refits the accuracy head on measured candidates: first with the encoder frozen, then the
whole model at a lower learning rate, Huber loss on standardised accuracy. Without
pretraining both refit phases train the whole model from its random init. With
``predictor.refit_model: proxy_ridge`` stage 2 fits a ridge regression on the pretrained proxy
head's outputs and the recipe features instead (``ProxyRidge``: for a few dozen labels).

Every fit takes an explicit seed: the same data and seed give bit-identical weights on CPU.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .config import PredictorConfig

logger = logging.getLogger(__name__)


def rank_corr(a: Sequence[float], b: Sequence[float], method: str = "spearman") -> float:
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    if method == "kendall":
        return float(stats.kendalltau(a, b).statistic)
    return float(stats.spearmanr(a, b).statistic)


@contextlib.contextmanager
def single_thread():
    """Run the predictor's small matmuls on one thread: on a shared CPU, intra-op threads
    only add synchronisation (measured 6x slower under load), and one thread makes every fit
    bit-reproducible whatever the machine's core count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _threads(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with single_thread():
            return fn(*args, **kwargs)

    return wrapper


class PredictorNet(nn.Module):
    def __init__(self, in_features: int, hidden: Sequence[int], head_hidden: int) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.encoder = nn.Sequential(*layers)
        self.proxy_head = nn.Sequential(nn.Linear(width, head_hidden), nn.ReLU(), nn.Linear(head_hidden, 2))
        self.acc_head = nn.Sequential(nn.Linear(width, head_hidden), nn.ReLU(), nn.Linear(head_hidden, 1))

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        z = self.encoder(x)
        return {"proxy": self.proxy_head(z), "acc": self.acc_head(z).squeeze(-1)}


@dataclass
class FitReport:
    train_loss: float
    val_mse: Optional[float] = None
    val_rank_corr: Optional[Dict[str, float]] = None
    epochs: int = 0
    samples: Dict[str, List[List[float]]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"train_loss": self.train_loss, "val_mse": self.val_mse, "val_rank_corr": self.val_rank_corr,
                "epochs": self.epochs, "samples": self.samples}


class ProxyRidge:
    """Stage 2's accuracy model for few labels (``predictor.refit_model: proxy_ridge``).

    Why not the MLP there: refitting it on ~20 labels over the whole encoding (a one-hot block
    per searched architecture dimension) fits noise. On the embedded default's labels its 5-fold
    CV Spearman was 0.0-0.4 over 5 seeds while a fixed rule over two recipe features (optimizer,
    lr) ranked the same candidates at 0.7-0.8 (README, Benchmarks). So this is a ridge
    regression with two penalties: a first group of a few informative inputs, the pretrained
    proxy head's standardised log FLOPs / log params (what stage 1 learned about the
    architecture), the recipe's numbers, its choices one-hot and every recipe choice x recipe
    number product (e.g. each optimizer's own response to lr); and a second group, the
    architecture features, so that architecture effects beyond FLOPs / params are learnt when
    the labels show them (on the synthetic oracle they dominate) and shrunk away when they do
    not. Targets are the labels' ranks (a collapsed training run is an outlier, not a lever);
    the two penalties are the most shrunk pair within one standard error of the least
    leave-one-out error (closed form, through the hat matrix). Predictions map back to accuracy units by matching the fitted scores' mean
    and spread to the labels' (monotone: the ranking is the ridge's). Hand-written because it
    is a few lines of linear algebra on (n <= a few hundred) x (<= a few dozen) matrices.
    """

    LAMBDAS = tuple(float(v) for v in np.logspace(-2, 3, 26))

    def __init__(self, columns: Dict[str, List[Any]], state: Optional[Dict[str, Any]] = None) -> None:
        self.columns = columns
        self.state = state

    def design(self, proxy: np.ndarray, features: np.ndarray) -> np.ndarray:
        """(N, 2) standardised proxy outputs + (N, F) features -> (N, D) regression inputs: the
        proxies and the recipe terms first, the architecture features last."""
        numbers = features[:, self.columns["numbers"]]
        blocks = [proxy, numbers]
        onehots = [features[:, group] for group in self.columns["choices"]]
        if onehots:
            oh = np.concatenate(onehots, 1)
            blocks += [oh] + [oh[:, [i]] * numbers for i in range(oh.shape[1])]
        blocks.append(features[:, self.columns.get("architecture", [])])
        return np.concatenate(blocks, 1).astype(np.float64)

    def fit(self, z: np.ndarray, acc: np.ndarray) -> Tuple[float, float]:
        """Fit on inputs ``z`` (``design``'s) and labels ``acc``; returns the chosen penalties
        (proxies and recipe, architecture features)."""
        from scipy.stats import rankdata

        acc = np.asarray(acc, dtype=np.float64)
        target = rankdata(acc) / len(acc)
        mu, sd = z.mean(0), z.std(0)
        sd = np.where(sd < 1e-8, 1.0, sd)  # a constant column centres to zero
        zs = np.concatenate([(z - mu) / sd, np.ones((len(z), 1))], 1)
        n_arch = len(self.columns.get("architecture", []))
        is_arch = np.zeros(zs.shape[1], dtype=bool)
        is_arch[zs.shape[1] - 1 - n_arch:-1] = True
        gram, fits = zs.T @ zs, []
        for lam in self.LAMBDAS:
            for lam_arch in (self.LAMBDAS if n_arch else (0.0,)):
                pen = np.diag(np.where(is_arch, lam_arch, lam))
                pen[-1, -1] = 0.0  # the intercept is not shrunk
                inv = np.linalg.solve(gram + pen, zs.T)
                w = inv @ target
                h = np.einsum("ij,ji->i", zs, inv)
                sq = ((target - zs @ w) / np.maximum(1.0 - h, 1e-9)) ** 2
                fits.append((float(sq.mean()), float(sq.std()) / np.sqrt(len(sq)), (lam, lam_arch), w))
        # the one-standard-error rule: the most shrunk pair whose leave-one-out error is within
        # one standard error of the least (picking the bare minimum among many pairs on ~20
        # labels overfits the choice)
        least = min(fits, key=lambda f: f[0])
        _, _, penalties, w = max((f for f in fits if f[0] <= least[0] + least[1]),
                                 key=lambda f: (np.log(f[2][0]) + np.log(max(f[2][1], 1e-12)), f[2]))
        score = zs @ w
        spread = float(score.std())
        scale = float(acc.std()) / spread if spread > 1e-12 else 0.0
        self.state = {"mean": torch.from_numpy(mu), "std": torch.from_numpy(sd), "weights": torch.from_numpy(w),
                      "penalty": [float(p) for p in penalties], "score_mean": float(score.mean()),
                      "acc_mean": float(acc.mean()), "scale": scale}
        return penalties

    def predict(self, z: np.ndarray) -> np.ndarray:
        st = self.state
        zs = np.concatenate([(z - st["mean"].numpy()) / st["std"].numpy(), np.ones((len(z), 1))], 1)
        return st["acc_mean"] + (zs @ st["weights"].numpy() - st["score_mean"]) * st["scale"]


class Predictor:
    """Encoder + proxy head + accuracy head over the space's feature vectors."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (256, 256), head_hidden: int = 64,
                 seed: int = 0, settings: Optional[PredictorConfig] = None,
                 columns: Optional[Dict[str, List[Any]]] = None) -> None:
        self.in_features = in_features
        # the recipe's feature columns (Encoder.recipe_columns), for ProxyRidge
        self.columns = columns or {"choices": [], "numbers": []}
        self.ridge: Optional[ProxyRidge] = None
        self.hidden = list(hidden)
        self.head_hidden = head_hidden
        self.settings = settings or PredictorConfig()
        torch.manual_seed(seed)
        self.net = PredictorNet(in_features, self.hidden, head_hidden)
        self.pretrained = False
        self.proxy_stats = np.zeros((2, 2))          # mean/std of log FLOPs, log params
        self.acc_stats = np.array([0.0, 1.0])       # mean/std of accuracy targets

    @classmethod
    def from_config(cls, in_features: int, pcfg: PredictorConfig, seed: int,
                    columns: Optional[Dict[str, List[Any]]] = None) -> "Predictor":
        return cls(in_features, pcfg.hidden, pcfg.head_hidden, seed, pcfg, columns)

    # ------------------------------------------------------------------ stage 1
    @_threads
    def pretrain(self, features: np.ndarray, flops: np.ndarray, params: np.ndarray, seed: int,
                 epochs: Optional[int] = None, progress: bool = False) -> FitReport:
        """Encoder + proxy head on (log FLOPs, log params); 80/20 split by default."""
        epochs = int(epochs if epochs is not None else self.settings.pretrain_epochs)
        lr = self.settings.pretrain_lr
        bs = int(self.settings.batch_size)
        val_fraction = self.settings.val_fraction
        g = np.random.default_rng(seed)
        n = len(features)
        order = g.permutation(n)
        n_val = max(1, int(round(n * val_fraction))) if n > 4 else 0
        val_idx, tr_idx = order[:n_val], order[n_val:]
        y = np.stack([np.log(np.maximum(flops, 1.0)), np.log(np.maximum(params, 1.0))], 1)
        mean, std = y[tr_idx].mean(0), y[tr_idx].std(0) + 1e-8
        self.proxy_stats = np.stack([mean, std])
        yn = ((y - mean) / std).astype(np.float32)
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        yt = torch.from_numpy(yn)
        torch.manual_seed(seed)
        params_ = list(self.net.encoder.parameters()) + list(self.net.proxy_head.parameters())
        opt = torch.optim.Adam(params_, lr=lr, weight_decay=self.settings.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
        self.net.train()
        last = float("nan")
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=epochs, desc="stage 1: pretrain", unit="ep", leave=False)
        tr = torch.from_numpy(tr_idx)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            perm = tr[torch.randperm(len(tr), generator=gen)]
            total = 0.0
            for i in range(0, len(perm), bs):
                b = perm[i:i + bs]
                loss = nn.functional.mse_loss(self.net(x[b])["proxy"], yt[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
            sched.step()
            last = total / max(1, len(perm))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last:.4f}")
        if bar is not None:
            bar.close()
        self.pretrained = True
        report = FitReport(last, epochs=epochs)
        if n_val:
            with torch.no_grad():
                self.net.eval()
                pv = self.net(x[torch.from_numpy(val_idx)])["proxy"].numpy()
            report.val_mse = float(((pv - yn[val_idx]) ** 2).mean())
            report.val_rank_corr = {"flops": rank_corr(pv[:, 0], yn[val_idx, 0]),
                                    "params": rank_corr(pv[:, 1], yn[val_idx, 1])}
            keep = val_idx[:1000]
            pk = pv[:1000] * std + mean
            report.samples = {"flops": [[float(np.exp(y[i, 0])), float(np.exp(p))] for i, p in zip(keep, pk[:, 0])],
                              "params": [[float(np.exp(y[i, 1])), float(np.exp(p))] for i, p in zip(keep, pk[:, 1])]}
        return report

    @_threads
    def predict_proxy(self, features: np.ndarray) -> np.ndarray:
        """(N, 2) predicted (FLOPs, params)."""
        with torch.no_grad():
            self.net.eval()
            p = self.net(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)))["proxy"].numpy()
        return np.exp(p * self.proxy_stats[1] + self.proxy_stats[0])

    # ------------------------------------------------------------------ stage 2
    @_threads
    def refit(self, features: np.ndarray, acc: np.ndarray, seed: int,
              frozen_epochs: Optional[int] = None, full_epochs: Optional[int] = None) -> FitReport:
        """Accuracy head (encoder frozen when pretrained), then the whole model at lr x factor;
        or, with ``refit_model: proxy_ridge``, the ProxyRidge model (the MLP stays as pretrained)."""
        if self.settings.refit_model == "proxy_ridge":
            return self._refit_ridge(features, acc)
        frozen_epochs = int(frozen_epochs if frozen_epochs is not None else self.settings.refit_frozen_epochs)
        full_epochs = int(full_epochs if full_epochs is not None else self.settings.refit_full_epochs)
        lr = self.settings.refit_lr
        factor = self.settings.refit_full_lr_factor
        bs = int(self.settings.refit_batch_size)
        delta = self.settings.huber_delta
        acc = np.asarray(acc, dtype=np.float64)
        mean, std = float(acc.mean()), float(acc.std()) + 1e-6
        if len(acc) < 2 or std < 1e-3:
            std = max(std, 1.0)
        self.acc_stats = np.array([mean, std])
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        y = torch.from_numpy(((acc - mean) / std).astype(np.float32))
        loss_fn = nn.HuberLoss(delta=delta)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        last = float("nan")
        phases = []
        if frozen_epochs:
            if self.pretrained:
                phases.append((list(self.net.acc_head.parameters()), lr, frozen_epochs))
            else:
                phases.append((list(self.net.encoder.parameters()) + list(self.net.acc_head.parameters()), lr,
                               frozen_epochs))
        if full_epochs:
            phases.append((list(self.net.parameters()), lr * factor, full_epochs))
        self.net.train()
        for params_, plr, ep in phases:
            opt = torch.optim.Adam(params_, lr=plr, weight_decay=self.settings.weight_decay)
            for _ in range(ep):
                perm = torch.randperm(len(x), generator=gen)
                total = 0.0
                for i in range(0, len(perm), bs):
                    b = perm[i:i + bs]
                    out = self.net(x[b])
                    loss = loss_fn(out["acc"], y[b])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += loss.item() * len(b)
                last = total / max(1, len(perm))
        return FitReport(last, epochs=frozen_epochs + full_epochs)

    def _head(self, features: np.ndarray, head: str, batch: int = 8192) -> List[np.ndarray]:
        """The net's ``head`` output ("proxy" or "acc") for (N, F) features, in batches."""
        out = []
        with torch.no_grad():
            self.net.eval()
            for i in range(0, len(features), batch):
                xb = torch.from_numpy(np.ascontiguousarray(features[i:i + batch], dtype=np.float32))
                out.append(self.net(xb)[head].numpy())
        return out

    def _proxy_standardised(self, features: np.ndarray, batch: int = 8192) -> np.ndarray:
        out = self._head(features, "proxy", batch)
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 2))

    def _refit_ridge(self, features: np.ndarray, acc: np.ndarray) -> FitReport:
        acc = np.asarray(acc, dtype=np.float64)
        ridge = ProxyRidge(self.columns)
        z = ridge.design(self._proxy_standardised(features), np.asarray(features, dtype=np.float64))
        ridge.fit(z, acc)
        self.ridge = ridge
        self.acc_stats = np.array([float(acc.mean()), float(acc.std()) + 1e-6])
        fitted = ridge.predict(z)
        return FitReport(float(np.mean((fitted - acc) ** 2)), epochs=0)

    @_threads
    def predict(self, features: np.ndarray, batch: int = 8192) -> np.ndarray:
        """Predicted accuracy (in the targets' units) for (N, F) features."""
        if self.ridge is not None:
            z = self.ridge.design(self._proxy_standardised(features, batch), np.asarray(features, dtype=np.float64))
            return self.ridge.predict(z)
        out = self._head(features, "acc", batch)
        p = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
        return p.astype(np.float64) * self.acc_stats[1] + self.acc_stats[0]

    # ------------------------------------------------------------------ checkpoints
    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save({"state": self.net.state_dict(), "in_features": self.in_features, "hidden": self.hidden,
                    "head_hidden": self.head_hidden, "pretrained": self.pretrained,
                    "proxy_stats": torch.from_numpy(np.asarray(self.proxy_stats, dtype=np.float64)),
                    "acc_stats": torch.from_numpy(np.asarray(self.acc_stats, dtype=np.float64)),
                    "columns": self.columns, "ridge": None if self.ridge is None else self.ridge.state}, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes, settings: Optional[PredictorConfig] = None) -> "Predictor":
        d = torch.load(io.BytesIO(blob), weights_only=True)
        p = cls(d["in_features"], d["hidden"], d["head_hidden"], 0, settings, d.get("columns"))
        p.net.load_state_dict(d["state"])
        if d.get("ridge") is not None:
            p.ridge = ProxyRidge(p.columns, d["ridge"])
        p.pretrained = bool(d["pretrained"])
        p.proxy_stats = d["proxy_stats"].numpy()
        p.acc_stats = d["acc_stats"].numpy()
        return p


def cross_validated_rank_corr(blob: bytes, settings: PredictorConfig, features: np.ndarray, acc: np.ndarray,
                              folds: int = 5, seed: int = 0) -> Dict[str, Any]:
    """How well the refit predictor ranks candidates it was not fitted on: ``folds``-fold
    cross-validation over measured candidates. Each fold refits a copy of ``blob`` (the
    stage-1 predictor, as stage 2 does) on the other folds and predicts the held-out one; the
    Spearman / Kendall correlation is over all held-out predictions pooled. Deterministic
    for a seed (the fold split and each refit derive from it)."""
    acc = np.asarray(acc, dtype=np.float64)
    n = len(acc)
    k = min(int(folds), n)
    if k < 2 or n < 4:
        return {"folds": k, "n": n, "spearman": None, "kendall": None, "points": []}
    parts = np.array_split(np.random.default_rng(seed).permutation(n), k)
    pred = np.empty(n)
    for i, held in enumerate(parts):
        fit = np.setdiff1d(np.arange(n), held)
        p = Predictor.from_bytes(blob, settings)
        p.refit(features[fit], acc[fit], seed=seed * 1000 + i)
        pred[held] = p.predict(features[held])
    return {"folds": k, "n": n, "spearman": rank_corr(pred, acc, "spearman"),
            "kendall": rank_corr(pred, acc, "kendall"), "points": [[float(a), float(b)] for a, b in zip(pred, acc)]}
