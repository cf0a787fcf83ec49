"""The run report: report.md + report.json and matplotlib plots in the run directory.

``heldout``: the predictor's Spearman on candidates it was not fitted on (the last round, as
predicted before it trained; a 5-fold cross-validation of the refit over all measured ones).

Plots: proxy-head fit (stage 1), predicted vs measured accuracy (stage 2, predictions made
before each round trained), rank correlation vs epoch with the chosen early-stop epoch,
measured candidates per round in accuracy-vs-FLOPs, and the final Pareto front (measured
candidates and stage-3 winners) with the zoo's FBNetV3 models as reference points.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional

import numpy as np
from matplotlib.colors import BoundaryNorm
from matplotlib.ticker import FormatStrFormatter

from fbnet_zoo.io_utils import atomic_path, atomic_write_text

from .predictor import cross_validated_rank_corr, rank_corr

logger = logging.getLogger(__name__)

# The paper's ImageNet top-1 of the zoo models (nars_facts.md); F has no published number.
ZOO_TOP1 = {"FBNetV3-A": 79.1, "FBNetV3-B": 79.8, "FBNetV3-C": 80.5, "FBNetV3-D": 80.8, "FBNetV3-E": 81.3,
            "FBNetV3-G": 82.8}


def pareto_front(points: List[tuple]) -> List[tuple]:
    """(cost, value, ...) points on the front: no other point is cheaper and at least as good."""
    front, best = [], -float("inf")
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if p[1] > best:
            front.append(p)
            best = p[1]
    return front


def zoo_reference(num_classes: int, convention: str = "fvcore") -> List[Dict[str, Any]]:
    from fbnet_zoo.complexity import complexity
    from fbnet_zoo.registry import get_spec

    out = []
    for name, top1 in ZOO_TOP1.items():
        try:
            spec = get_spec(name)
        except Exception:  # a stripped-down install without the zoo YAMLs
            continue
        cx = complexity(spec, None, num_classes, convention)
        out.append({"name": name, "flops": cx.flops, "params": cx.params, "paper_top1": top1})
    return out


HELDOUT_FOLDS = 5


def heldout_rank_corr(run, measured: List[Dict[str, Any]], epoch: int, pred_vs_meas: List[tuple]) -> Dict[str, Any]:
    """How well the predictor ranks candidates it was not fitted on, two ways: ``last_round``:
    the last round's candidates, predicted by the previous round's refit before they trained
    (few, and chosen by that predictor, so a narrow range); ``cross_validated``: every measured
    candidate held out once in a k-fold cross-validation of the stage-2 refit (from the stage-1
    predictor, as stage 2 refits)."""
    out: Dict[str, Any] = {"last_round": None, "cross_validated": None}
    if pred_vs_meas:
        last = max(p[2] for p in pred_vs_meas)
        pts = [p for p in pred_vs_meas if p[2] == last]
        out["last_round"] = {"round": last, "n": len(pts),
                             "spearman": rank_corr([p[0] for p in pts], [p[1] for p in pts]) if len(pts) > 2 else None}
    blob = run.store.load_checkpoint("stage1")
    if blob is not None and len(measured) >= 2 * HELDOUT_FOLDS:
        x, y = run.labelled(measured, epoch)
        out["cross_validated"] = cross_validated_rank_corr(blob, run.cfg.predictor, x, y, HELDOUT_FOLDS,
                                                           seed=run.seed)
        out["cross_validated"]["refit_model"] = run.cfg.predictor.refit_model
    return out


def zoo_shares_task(task: Dict[str, Any]) -> bool:
    """The zoo's numbers are ImageNet-1k top-1 at 224-ish pixels: comparable only with a search
    that measures the same task (all 1000 ImageFolder classes, a 1000-class head, >= 160 px)."""
    return (task.get("dataset") == "imagefolder" and task.get("train_classes") in (None, 1000)
            and task.get("num_classes") == 1000 and (task.get("resolution") or 0) >= 160)


def fmt_sig(x: Optional[float], digits: int = 3) -> str:
    """``digits`` significant digits (losses, MSEs), '-' for a missing number."""
    return "-" if x is None else f"{x:.{digits}g}"


def fmt_dec(x: Optional[float], decimals: int = 3) -> str:
    """Fixed decimals (correlations, accuracies), '-' for a missing number."""
    return "-" if x is None else f"{x:.{decimals}f}"


def collect(run) -> Dict[str, Any]:
    store = run.store
    e = run.target_epoch()
    cands = store.candidates()
    prog = store.all_progress()
    stage1 = store.checkpoint_info("stage1") or {}
    results = store.results()
    measured = [c for c in cands if c["status"] == "ok"]
    rounds: Dict[int, Dict[str, Any]] = {}
    for c in cands:
        r = rounds.setdefault(c["round"], {"round": c["round"], "candidates": 0, "ok": 0, "failed": 0,
                                           "pending": 0, "best_top1": None, "train_seconds": 0.0})
        r["candidates"] += 1
        r[c["status"] if c["status"] in ("ok", "failed", "pending") else "failed"] += 1
        if c["status"] == "ok":
            t = run._target(c, e)
            r["best_top1"] = t if r["best_top1"] is None else max(r["best_top1"], t)
            r["train_seconds"] += float(c["wall_seconds"] or 0.0)
    pred_vs_meas = [(c["predicted"], run._target(c, e), c["round"]) for c in measured if c["predicted"] is not None]
    pvm_corr = rank_corr([p[0] for p in pred_vs_meas], [p[1] for p in pred_vs_meas]) if len(pred_vs_meas) > 2 else None
    es = prog.get("early_stop", {}).get("info", {})
    if run.space.zoo_archs:
        arch, recipe = run.space.decode_point(run.space.extreme_point(False), "task")
        train = run.cfg.train_settings()
        task = {"dataset": train.dataset, "train_classes": train.num_classes,
                "num_classes": run.space.num_classes, "resolution": recipe.resolution or arch.input_size}
    else:  # a space of benchmark cells: the task is the table's dataset
        task = {"dataset": f"table:{run.cfg.bench.dataset}", "train_classes": None,
                "num_classes": run.space.num_classes, "resolution": getattr(run.space, "input_size", None)}
    return {
        "run": run.run, "run_dir": run.run_dir, "mode": run.cfg.mode, "seed": run.seed,
        "space": run.space.describe(), "task": task,
        "stage1": {k: v for k, v in stage1.items() if k != "samples"},
        "stage1_samples": stage1.get("samples", {}),
        "early_stop": es,
        "target_epoch": e,
        "rounds": [rounds[k] for k in sorted(rounds)],
        "predicted_vs_measured": {"points": pred_vs_meas, "spearman": pvm_corr},
        "heldout": heldout_rank_corr(run, measured, e, pred_vs_meas),
        "candidates": [{"key": c["key"], "round": c["round"], "status": c["status"], "flops": c["flops"],
                        "params": c["params"], "predicted": c["predicted"], "top1": c["top1"],
                        "target": run._target(c, e) if c["status"] == "ok" and c["top1"] else None,
                        "error": c["error"], "wall_seconds": c["wall_seconds"]} for c in cands],
        "results": results,
        "failed": [{"key": c["key"], "error": c["error"]} for c in cands if c["status"] == "failed"],
        "flops_convention": run.space.flops_convention,
    }


def _plot_proxy_fit(data: Dict[str, Any], plt) -> Any:
    s = data["stage1_samples"]
    if not s:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, key in zip(axes, ("flops", "params")):
        pts = np.array(s.get(key, []))
        if len(pts):
            ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.5)
            lo, hi = pts.min(), pts.max()
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"true {key}")
        ax.set_ylabel(f"predicted {key}")
        ax.set_title(f"proxy head ({key}), validation split")
    return fig


def _round_colorbar(fig, ax, mappable, rounds: np.ndarray) -> None:
    """A colour bar with one integer tick per round."""
    cb = fig.colorbar(mappable, ax=ax, label="round")
    cb.set_ticks(sorted({int(r) for r in rounds}))


def _plot_predicted_vs_measured(data: Dict[str, Any], plt) -> Any:
    pvm = data["predicted_vs_measured"]
    fig, ax = plt.subplots(figsize=(5, 4))
    if pvm["points"]:
        a = np.array(pvm["points"], dtype=float)
        lo_r, hi_r = int(a[:, 2].min()), int(a[:, 2].max())
        norm = BoundaryNorm(np.arange(lo_r - 0.5, hi_r + 1.5), plt.get_cmap("viridis").N)
        sc = ax.scatter(a[:, 0], a[:, 1], c=a[:, 2], cmap="viridis", norm=norm, s=14)
        _round_colorbar(fig, ax, sc, a[:, 2])
        lo, hi = a[:, :2].min(), a[:, :2].max()
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("predicted top-1 (before training)")
    ax.set_ylabel(f"measured top-1 (epoch {data['target_epoch']})")
    ax.set_title(f"predictor, Spearman {fmt_dec(pvm['spearman'], 2)}")
    return fig


def _plot_rank_corr(data: Dict[str, Any], plt) -> Any:
    es = data["early_stop"]
    fig, ax = plt.subplots(figsize=(5, 4))
    corrs = es.get("correlations") or []
    if corrs:
        ax.plot(range(1, len(corrs) + 1), corrs, "o-")
        ax.axhline(es.get("threshold", 0.92), color="gray", ls="--", label=f"threshold {es.get('threshold', 0.92):g}")
        ax.axvline(es.get("epoch", len(corrs)), color="red", ls=":", label=f"chosen e={es.get('epoch')}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend()
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{es.get('method', 'rank')} corr. with final top-1")
    ax.set_title("early-stop epoch (round 1)")
    return fig


def _plot_rounds(data: Dict[str, Any], plt) -> Any:
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in data["rounds"]:
        pts = [(c["flops"], c["target"]) for c in data["candidates"]
               if c["round"] == r["round"] and c["target"] is not None]
        if pts:
            a = np.array(pts)
            ax.scatter(a[:, 0] / 1e6, a[:, 1], s=14, label=f"round {r['round']}")
    ax.set_xlabel("MFLOPs")
    ax.set_ylabel(f"top-1 (epoch {data['target_epoch']})")
    ax.set_title("measured candidates per round")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return fig


def _plot_pareto(data: Dict[str, Any], plt) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    meas = [(c["flops"], c["target"]) for c in data["candidates"] if c["target"] is not None]
    if meas:
        a = np.array(meas)
        ax.scatter(a[:, 0] / 1e6, a[:, 1], s=8, color="lightgray", label="measured")
        front = np.array(pareto_front(meas))
        ax.plot(front[:, 0] / 1e6, front[:, 1], "o-", color="tab:blue", ms=4, label="measured Pareto front")
    wins = [(r["flops"], r["predicted_top1"], r["name"]) for r in data["results"].values()]
    for f, p, n in wins:
        ax.scatter([f / 1e6], [p], marker="*", s=120, color="tab:red")
        ax.annotate(n.split("_")[-1], (f / 1e6, p), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if wins:
        ax.scatter([], [], marker="*", color="tab:red", label="stage-3 winners (predicted)")
    task = data["task"]
    if zoo_shares_task(task):  # same axis: the zoo's ImageNet-1k top-1 is this task's number
        zoo = zoo_reference(task["num_classes"], data["flops_convention"])
        ax.plot([z["flops"] / 1e6 for z in zoo], [z["paper_top1"] for z in zoo], "s--", color="tab:green",
                ms=4, label="zoo FBNetV3 (paper ImageNet top-1)")
        for z in zoo:
            ax.annotate(z["name"][-1], (z["flops"] / 1e6, z["paper_top1"]), fontsize=7, color="tab:green")
    ax.set_xscale("log")
    for axis_formatter in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
        axis_formatter(FormatStrFormatter("%g"))  # 0.6, not 6x10^-1
    ax.set_xlabel("MFLOPs (log)")
    ax.set_ylabel(f"top-1 on the search task ({task['dataset']}, {task['num_classes']} classes)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=7)
    ax.set_title("Pareto front")
    return fig


PLOTS = (("proxy_fit.png", _plot_proxy_fit), ("predicted_vs_measured.png", _plot_predicted_vs_measured),
         ("rank_corr_vs_epoch.png", _plot_rank_corr), ("rounds_acc_vs_flops.png", _plot_rounds),
         ("pareto.png", _plot_pareto))


def _plots(data: Dict[str, Any], plot_dir: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(plot_dir, exist_ok=True)
    files = []
    for name, draw in PLOTS:
        fig = draw(data, plt)
        if fig is None:
            continue
        files.append(save_figure(fig, os.path.join(plot_dir, name)))
    return files


def save_figure(fig, path: str, dpi: int = 90) -> str:
    """Lay out, write atomically (a reader never sees half a PNG) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return path


def _md(data: Dict[str, Any], plots: List[str], outputs: Optional[List[Dict[str, Any]]]) -> str:
    L = [f"# Search report: {data['run']}", "",
         f"mode `{data['mode']}`, seed {data['seed']}, space of {data['space']['ndim']} coordinates "
         f"({len(data['space']['dims'])} dimensions, ties: {data['space']['ties'] or 'none'}); "
         f"FLOPs and params in the {data['flops_convention']} convention", ""]
    s1 = data["stage1"]
    if s1:
        corr = s1.get("val_rank_corr") or {}
        fr = s1.get("flops_range") or []
        fr_s = f"{fr[0] / 1e6:.3g} to {fr[1] / 1e6:.3g} MFLOPs" if len(fr) == 2 else "-"
        L += ["## Stage 1: pool and predictor pretraining", "",
              f"- pool: {s1.get('pool_size')} candidates (of {s1.get('pool_drawn')} Sobol points drawn), {fr_s}",
              f"- pretraining: {s1.get('pretrained')}, validation MSE {fmt_sig(s1.get('val_mse'))}, rank "
              f"correlation FLOPs {fmt_dec(corr.get('flops'))}, params {fmt_dec(corr.get('params'))}; "
              f"{s1.get('seconds', 0):.1f} s", ""]
    es = data["early_stop"]
    if es.get("skipped"):
        es_line = f"early stopping skipped ({es['skipped']}); every candidate counts at its final accuracy"
    else:
        es_line = (f"early-stop epoch e = {es.get('epoch')} of {es.get('full_epochs')} ({es.get('method')} >= "
                   f"{es.get('threshold')})")
    L += ["## Stage 2: rounds", "",
          f"{es_line}; predictor Spearman (predicted before training vs measured): "
          f"{fmt_dec(data['predicted_vs_measured']['spearman'])}", "",
          *_heldout_md(data["heldout"]),
          "| round | candidates | ok | failed | retryable | best top-1 | train s |", "|---|---|---|---|---|---|---|"]
    for r in data["rounds"]:
        L.append(f"| {r['round']} | {r['candidates']} | {r['ok']} | {r['failed']} | {r.get('retryable', 0)} | "
                 f"{fmt_dec(r['best_top1'], 2)} | {r['train_seconds']:.1f} |")
    if data["failed"]:
        L += ["", "Failed candidates:"] + [f"- `{f['key']}`: {f['error']}" for f in data["failed"][:20]]
    L += ["", "## Stage 3: winners per constraint", "",
          "| constraint | name | MFLOPs | M params | predicted top-1 | best measured top-1 | generations | s |",
          "|---|---|---|---|---|---|---|---|"]
    for label, r in data["results"].items():
        bm = r.get("best_measured")
        bm_s = "-" if not bm else f"{bm['top1']:.2f}"
        L.append(f"| {label} | `{r['name']}` | {r['flops'] / 1e6:.2f} | {r['params'] / 1e6:.3f} | "
                 f"{r['predicted_top1']:.2f} | {bm_s} | {r['generations']} | "
                 f"{r['seconds']:.1f} |")
    if outputs:
        L += ["", "## Outputs", ""]
        for o in outputs:
            recipe = f", recipe `{os.path.relpath(o['recipe_yaml'], data['run_dir'])}`" if o.get("recipe_yaml") else ""
            L.append(f"- `{o['name']}` ({o['origin']}): {o['flops'] / 1e6:.2f} MFLOPs, {o['params'] / 1e6:.3f} M "
                     f"params; arch `{os.path.relpath(o['arch_yaml'], data['run_dir'])}`{recipe}")
    if plots:
        L += ["", "## Plots", ""] + [f"![{os.path.basename(p)}](plots/{os.path.basename(p)})" for p in plots]
    return "\n".join(L) + "\n"


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.2f}"


def _heldout_md(h: Dict[str, Any]) -> List[str]:
    L = ["Predictor ranking of held-out candidates (Spearman):", ""]
    lr, cv = h.get("last_round"), h.get("cross_validated")
    if lr:
        L.append(f"- last round ({lr['n']} candidates of round {lr['round']}, predicted before they trained): "
                 f"{_fmt(lr['spearman'])}")
    if cv:
        L.append(f"- {cv['folds']}-fold cross-validation of the refit ({cv.get('refit_model', 'mlp')}) over all "
                 f"{cv['n']} measured candidates "
                 f"(each predicted by a refit that never saw it): {_fmt(cv['spearman'])} "
                 f"(Kendall {_fmt(cv['kendall'])})")
    return L + [""] if len(L) > 2 else []


def write_report(run, outputs: Optional[List[Dict[str, Any]]] = None, plots: bool = True) -> Dict[str, str]:
    data = collect(run)
    if outputs is None:
        outputs = _outputs_on_disk(run.run_dir, run.space.num_classes, run.space.flops_convention)
    data["outputs"] = outputs
    files: List[str] = []
    if plots:
        try:
            files = _plots(data, os.path.join(run.run_dir, "plots"))
        except Exception as e:  # a plot must never lose the run's report
            logger.warning("report: plotting failed: %s", e)
    md = os.path.join(run.run_dir, "report.md")
    js = os.path.join(run.run_dir, "report.json")
    data.pop("stage1_samples", None)
    atomic_write_text(js, json.dumps(data, indent=1, default=str))
    atomic_write_text(md, _md(data, files, outputs))
    return {"markdown": md, "json": js, "plots": files}


def _outputs_on_disk(run_dir: str, num_classes: int = 1000, convention: str = "fvcore") -> List[Dict[str, Any]]:
    from fbnet_zoo.spec import ArchSpec
    from fbnet_zoo.complexity import complexity

    out = []
    d = os.path.join(run_dir, "archs")
    if not os.path.isdir(d):
        return out
    for n in sorted(os.listdir(d)):
        if n.endswith(".yaml"):
            a = ArchSpec.from_yaml(os.path.join(d, n))
            cx = complexity(a, None, num_classes, convention)
            out.append({"name": a.name, "arch_yaml": os.path.join(d, n),
                        "recipe_yaml": os.path.join(run_dir, "recipes", n), "origin": "", "flops": cx.flops,
                        "params": cx.params})
    return out
