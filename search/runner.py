"""Orchestration of the three NARS stages over a durable run directory.

``run_search(cfg, run_dir)`` starts or resumes a run: everything a stage decides is
committed to the run's SQLite store before it acts on it (round selections before training,
each result as it arrives, each predictor refit, each stage-3 winner), and every random
choice derives from the config's seed, so a run killed at any moment and resumed with
``resume=True`` re-trains nothing already finished and ends with the result an
uninterrupted run would have produced.

Run directory layout::

    search.sqlite          the store (config, candidates, checkpoints, progress, results)
    search.lock            held (fcntl.flock) by the one process working on the run
    archs/<name>.yaml      winning architectures (one per constraint, plus scaled family members)
    recipes/<name>.yaml    their recipes
    report.md, report.json, plots/*.png
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from fbnet_zoo.io_utils import output_file
from fbnet_zoo.training.recipe import Recipe

from .candidate import Candidate, TrainResult
from .config import (PLACEMENT_SECTIONS, STAGE3_SECTIONS, SearchConfig, SearchConfigError, SearchRunError,
                     config_digest, constraint_label, diff_configs, with_defaults)
from .early_stop import select_early_stop_epoch
from .encoding import Encoder
from .evolution import AdaptiveGA, satisfies
from .executors import RETRYABLE, ExecutorError, make_executor
from .pool import Pool, build_pool
from .predictor import Predictor, rank_corr
from .report import write_report
from .spaces import Space
from .store import DB_NAME, RunLock, RunStore

logger = logging.getLogger(__name__)

STORE_VERSION = 1


def run_name(run_dir: str) -> str:
    base = os.path.basename(os.path.normpath(run_dir)).lower()
    return re.sub(r"[^a-z0-9]+", "_", base).strip("_") or "run"


def arch_name(run: str, label: str) -> str:
    return f"fbnetv3_search_{run}_{label}"


def constraint_text(c: Mapping[str, float]) -> str:
    """'flops<=300000&params<=19500' for {flops: 3e5, params: 19500}."""
    return "&".join(f"{k}<={v:g}" for k, v in c.items())


def make_executor_for(cfg: SearchConfig, space: Space, run_dir: str,
                      values_of: Callable[[Candidate], dict], kind: Optional[str] = None,
                      ray_address: Optional[str] = None, **opts: Any):
    """The executor named by ``kind`` (default: the config's), through the executor registry:
    every registered kind gets the same arguments and the search's context."""
    ex = cfg.executor
    try:
        return make_executor(kind=kind or ex.kind, train=dict(cfg.train), run_dir=run_dir,
                             ray_address=ray_address or ex.ray_address,
                             num_cpus_per_candidate=ex.num_cpus_per_candidate,
                             num_gpus_per_candidate=ex.num_gpus_per_candidate, max_retries=ex.max_retries,
                             space=space, values_of=values_of, search_config=cfg, **opts)
    except SearchConfigError:
        raise
    except ValueError as e:  # the registry's / trainer's own config errors
        raise SearchConfigError(f"executor: {e}") from None


def stored_config(run_dir: str) -> Dict[str, Any]:
    """The config a run was started with (what ``--resume DIR KEY=VALUE`` edits)."""
    if not RunStore.exists(run_dir):
        raise SearchConfigError(f"--resume: {run_dir!r} holds no search run ({DB_NAME} missing)")
    store = RunStore(run_dir, create=False)
    try:
        cfg = store.get_meta("config")
    finally:
        store.close()
    if cfg is None:
        raise SearchConfigError(f"--resume: {run_dir!r} holds no config (the run never started)")
    return cfg


class SearchRun:
    """One run directory: open (new or resumed), then ``stage1()``, ``stage2()``, ``stage3()``."""

    def __init__(self, cfg: Optional[SearchConfig], run_dir: str, resume: bool = False,
                 progress: bool = False, executor: Any = None, executor_kind: Optional[str] = None,
                 ray_address: Optional[str] = None) -> None:
        self.run_dir = run_dir
        self.store: Optional[RunStore] = None
        self.lock: Optional[RunLock] = None
        if os.path.exists(run_dir) and not os.path.isdir(run_dir):
            raise SearchConfigError(f"run dir {run_dir!r} is a file, not a directory")
        exists = RunStore.exists(run_dir)
        if resume and not exists:
            raise SearchConfigError(f"--resume: {run_dir!r} holds no search run ({DB_NAME} missing)")
        if not resume and exists:
            raise SearchConfigError(f"run dir {run_dir!r} already holds a run; pass --resume to continue it "
                                    "or choose another directory")
        if cfg is None and not exists:
            raise SearchConfigError("a new run needs a config")
        created = not os.path.exists(run_dir)
        try:
            os.makedirs(run_dir, exist_ok=True)
        except OSError as e:
            raise SearchConfigError(f"run dir {run_dir!r}: cannot create it ({e})") from None
        self.lock = RunLock(run_dir)  # before reading the store: its holder may be writing it
        try:
            self._stage3_update: Optional[Dict[str, Any]] = None  # the stored config with new stage-3 sections
            if exists:
                self.store = RunStore(run_dir, create=False)
                cfg = self._resumed_config(cfg)
            self._open(cfg, progress, executor, executor_kind, ray_address)
            if self._stage3_update is not None:  # validated: keep it with the run
                self.store.set_meta(config=self._stage3_update)
        except BaseException:
            if self.store is not None:
                self.store.close()
            self.lock.release()
            if created and self.store is None:  # a refused new run leaves no directory behind
                try:
                    os.remove(self.lock.path)
                    os.rmdir(run_dir)
                except OSError:
                    pass
            raise

    def _resumed_config(self, cfg: Optional[SearchConfig]) -> SearchConfig:
        """The stored config, or the caller's when it differs only in placement and stage-3
        sections: those may change on resume; a change anywhere else would invalidate finished
        training."""
        stored = self.store.get_meta("config")
        if stored is None:
            raise SearchConfigError(f"--resume: {self.run_dir!r} holds no config (the run never started)")
        stored = with_defaults(stored)  # a run dir older than a key runs as that key's default
        if cfg is None:
            return SearchConfig.from_mapping(stored)
        given = cfg.to_dict()
        if config_digest(given) != config_digest(stored):
            fixed = [k for k in set(stored) | set(given) if k not in PLACEMENT_SECTIONS + STAGE3_SECTIONS]
            diffs = diff_configs({k: stored.get(k) for k in fixed}, {k: given.get(k) for k in fixed})
            raise SearchConfigError(
                f"--resume: {self.run_dir!r} was started with a different config ({len(diffs)} differences in "
                "sections that decide what is trained: " + "; ".join(diffs[:5]) + (" ..." if len(diffs) > 5 else "")
                + f"); only {list(PLACEMENT_SECTIONS + STAGE3_SECTIONS)} may change on resume")
        changed = diff_configs({k: stored.get(k) for k in STAGE3_SECTIONS}, {k: given[k] for k in STAGE3_SECTIONS})
        if changed:  # the run dir keeps the stage-3 settings its outputs were made with
            logger.info("resume with changed stage-3 settings: %s", "; ".join(changed))
            self._stage3_update = dict(stored, **{k: given[k] for k in STAGE3_SECTIONS})
        # every other section equals the stored one (same digest): the caller's config, and its space, go on
        return cfg

    def _open(self, cfg: SearchConfig, progress: bool, executor: Any, executor_kind: Optional[str],
              ray_address: Optional[str]) -> None:
        run_dir = self.run_dir
        self.cfg = cfg
        self.seed = cfg.seed
        self.progress = progress
        self.space = cfg.search_space  # built once, when the config was validated
        self.encoder = Encoder(self.space)
        self.constraints = list(cfg.stage3.constraints)
        self._executor = executor
        self._executor_kind = executor_kind
        self._ray_address = ray_address
        self.pool: Optional[Pool] = None
        self._values: Dict[str, dict] = {}
        # everything that can be wrong with the input fails here, before the run dir is written
        self.check_constraints()
        kind = executor_kind or cfg.executor.kind
        if kind in ("table", "oracle") and self.space.kind != {"table": "nas_bench_201", "oracle": "fbnet"}[kind]:
            raise SearchConfigError(f"executor.kind: {kind!r} does not serve space.kind {self.space.kind!r}")
        if executor is None:
            cfg.train_settings()
        if self.store is None and kind == "table":  # the table is input too: read it before the store exists
            self.executor()
        if self.store is None:
            self.store = RunStore(run_dir)
            self.store.set_meta(config=cfg.to_dict(), digest=config_digest(cfg), seed=cfg.seed,
                                pool_seed=self._pool_seed(cfg), created=time.time(), version=STORE_VERSION,
                                run_name=run_name(run_dir))
        self.run = self.store.get_meta("run_name") or run_name(run_dir)

    @staticmethod
    def _pool_seed(cfg: SearchConfig) -> int:
        return cfg.seed * 7919 + 1

    # ------------------------------------------------------------------ checks before training
    def check_constraints(self) -> None:
        """A constraint below the smallest candidate of the space is an error before any training.

        The smallest candidate is the space's minimum corner (every size at its minimum); the
        FLOPs and params of an FBNet grow with every size, so no point of the space is below it
        in either resource. A joint constraint is met by the corner only if each bound is."""
        smallest = self.space.min_resources()
        for c in self.constraints:
            for res, bound in c.items():
                if bound < smallest[res]:
                    raise SearchConfigError(
                        f"stage3.constraints: {constraint_text(c)}: {res} <= {bound:g} cannot be met: the smallest "
                        f"candidate of the space has {smallest[res]:g} {res}")

    def check_constraints_on_pool(self) -> None:
        """Each constraint (all of its bounds at once) must be met by some point of the pool.

        Stage 3 starts its GA from measured candidates and pool points that meet the constraint,
        and fills the rest with uniform random points of the space, of which the pool is
        already a larger quasi-random sample; a constraint that no pool point meets jointly
        (each bound reachable alone, not together) would only fail after all training, so it is
        refused here, before stage 2 trains anything. This is a check on what the search can
        reach, not a proof that no point of the space meets it (a point near the minimum corner
        may): the message says how close the pool came and how to widen it."""
        pool = self.build_pool()
        for c in self.constraints:
            ok = np.ones(len(pool), dtype=bool)
            for res, bound in c.items():
                ok &= getattr(pool, res) <= bound
            if ok.any():
                continue
            excess = np.max([getattr(pool, res) / bound for res, bound in c.items()], axis=0)
            i = int(np.argmin(excess))
            smallest = self.space.min_resources()
            raise SearchConfigError(
                f"stage3.constraints: {constraint_text(c)} is met by none of the {len(pool)} pool candidates "
                f"(closest: {pool.flops[i]:g} flops, {pool.params[i]:g} params; the space's smallest candidate: "
                f"{smallest['flops']:g} flops, {smallest['params']:g} params); relax it, or aim the pool at it "
                "with pool.flops_max / pool.params_max")

    def check_data(self) -> None:
        """Build the training data and read a batch in this process before anything trains."""
        if not self.space.zoo_archs:  # benchmark cells: nothing trains; building the executor reads its table
            self.executor()
            return
        arch, recipe = self.space.decode_point(self.space.extreme_point(False), "data_check")
        try:
            self.executor().check_data(recipe.resolution or arch.input_size)
        except (ExecutorError, OSError) as e:
            raise SearchRunError(str(e)) from None

    def executor(self):
        if self._executor is None:
            self._executor = make_executor_for(self.cfg, self.space, self.run_dir, self._values_of,
                                               self._executor_kind, self._ray_address, progress=self.progress)
        return self._executor

    def _values_of(self, cand: Candidate) -> dict:
        return self._values[cand.key]

    def close(self) -> None:
        try:
            if self._executor is not None:
                try:
                    self._executor.close()
                finally:
                    self._executor = None
            self.store.close()
        finally:
            self.lock.release()

    # ------------------------------------------------------------------ stage 1
    def build_pool(self) -> Pool:
        if self.pool is None:
            p = self.cfg.pool
            self.pool = build_pool(self.space, p.n, self._pool_seed(self.cfg), p, p.max_draw_factor,
                                   progress=self.progress)
            self.pool_features = self.encoder.encode_units(self.pool.units)
            import hashlib

            digest = hashlib.sha1(",".join(self.pool.keys).encode()).hexdigest()
            stored = self.store.get_meta("pool_head")
            if stored is None:
                self.store.set_meta(pool_head=digest, pool_size=len(self.pool), pool_drawn=self.pool.drawn)
            elif stored != digest:
                raise SearchConfigError("the pool drawn now differs from the run's pool (the code or space changed "
                                        "since the run started); start a new run")
            self.check_constraints_on_pool()
        return self.pool

    def stage1(self) -> Predictor:
        pool = self.build_pool()
        blob = self.store.load_checkpoint("stage1")
        if blob is not None:
            return Predictor.from_bytes(blob, self.cfg.predictor)
        t0 = time.perf_counter()
        pcfg = self.cfg.predictor
        pred = Predictor.from_config(self.encoder.width, pcfg, self.seed, self.encoder.recipe_columns())
        info: Dict[str, Any] = {"pool_size": len(pool), "pool_drawn": pool.drawn, "pretrained": pcfg.pretrain,
                                "flops_range": [float(pool.flops.min()), float(pool.flops.max())]}
        if pcfg.pretrain:
            rep = pred.pretrain(self.pool_features, pool.flops, pool.params, seed=self.seed + 11,
                                progress=self.progress)
            info.update(rep.to_dict())
        info["seconds"] = time.perf_counter() - t0
        self.store.save_checkpoint("stage1", pred.to_bytes(), info, progress=("stage1", "done", info))
        logger.info("stage 1: pool %d, pretrain val MSE %.3g", len(pool), info.get("val_mse", float("nan")))
        return pred

    # ------------------------------------------------------------------ stage 2
    def _full_epochs(self) -> int:
        return int(self.cfg.stage2.epochs or self.space.full_epochs)

    def _entry(self, key: str, values: dict, predicted: Optional[float]) -> Dict[str, Any]:
        cand = self.space.candidate(key, values, name=f"cand_{key}").to_dict()
        f, p = self.space.cost(values)
        return {"key": key, "arch": cand["arch"], "recipe": cand["recipe"], "values": values, "flops": f,
                "params": p, "predicted": predicted}

    def _target(self, row: Mapping[str, Any], epoch: int) -> float:
        top1 = row["top1"]
        return float(top1[min(epoch, len(top1)) - 1])

    def labelled(self, rows: Sequence[Mapping[str, Any]], epoch: int) -> Tuple[np.ndarray, np.ndarray]:
        """Trained candidates ``rows`` as the predictor sees them: (N, F) features and their
        top-1 at ``epoch``."""
        x = self.encoder.encode_units(np.stack([self.space.unit_of(r["values"]) for r in rows]))
        return x, np.array([self._target(r, epoch) for r in rows])

    def target_epoch(self) -> int:
        """The epoch whose top-1 the predictor learns: the early-stop epoch once chosen."""
        return self.early_stop_epoch() or self._full_epochs()

    def early_stop_epoch(self) -> Optional[int]:
        prog = self.store.get_progress("early_stop")
        return int(prog["info"]["epoch"]) if prog else None

    def _select(self, rnd: int, pred: Predictor) -> None:
        pool = self.build_pool()
        m = self.cfg.stage2.m
        known = self.store.known_keys()
        if rnd == 1:
            order = list(range(len(pool)))
            scores = None
        else:
            scores = pred.predict(self.pool_features)
            order = sorted(range(len(pool)), key=lambda i: (-scores[i], i))
        local = self._local_candidates(rnd, pred, known) if rnd > 1 else []
        taken = known | {k for k, _, _ in local}
        chosen = [i for i in order if pool.keys[i] not in taken]
        chosen = chosen[:m - len(local)]
        if not chosen and not local:
            raise SearchConfigError(f"stage2 round {rnd}: the pool has no unevaluated candidate left; raise pool.n")
        epochs = self._full_epochs() if rnd == 1 else self.target_epoch()
        entries = [self._entry(k, v, s) for k, v, s in local]
        entries += [self._entry(pool.keys[i], pool.values[i], None if scores is None else float(scores[i]))
                    for i in chosen]
        self.store.add_round(rnd, entries, epochs)

    def _local_candidates(self, rnd: int, pred: Predictor, known: Any) -> List[tuple]:
        """``stage2.local_fraction`` of round ``rnd``'s m: the best-predicted unmeasured mutants
        (the space's mutation, one coordinate on average, at least one) of the
        ``stage2.local_parents`` best measured candidates that have any left, inside the
        pool's FLOPs / params window, as (key, values, predicted)."""
        s2 = self.cfg.stage2
        n_local = int(round(s2.local_fraction * s2.m))
        if not n_local:
            return []
        e = self.target_epoch()
        best = sorted(self.store.candidates(status="ok"), key=lambda r: (-self._target(r, e), r["key"]))
        rng = np.random.default_rng([self.seed, 7, rnd])  # a resumed run draws the same mutants
        found: Dict[str, tuple] = {}
        parents = 0
        for r in best:   # a parent whose mutants were all measured already is skipped
            unit = self.space.unit_of(r["values"])
            before = len(found)
            for _ in range(8 * self.space.ndim):
                values = self.space.decode(self.space.mutate(unit, 1.0 / self.space.ndim, rng))
                key = self.space.key(values)
                if key not in known and key not in found and self.cfg.pool.contains(*self.space.cost(values)):
                    found[key] = (key, values, self.space.unit_of(values))
            parents += len(found) > before
            if parents == s2.local_parents:
                break
        if not found:
            return []
        cands = list(found.values())
        scores = pred.predict(self.encoder.encode_units(np.stack([u for _, _, u in cands])))
        order = sorted(range(len(cands)), key=lambda i: (-scores[i], cands[i][0]))[:n_local]
        return [(cands[i][0], cands[i][1], float(scores[i])) for i in order]

    def _train_pending(self, rnd: int, epochs: int) -> None:
        pending = [r for r in self.store.candidates(rnd=rnd) if r["status"] in ("pending", RETRYABLE)]
        if not pending:
            return
        cands = []
        for row in pending:
            self._values[row["key"]] = row["values"]  # what the oracle executor scores
            cands.append(Candidate.from_dict(row))
        bar = None
        if self.progress:
            from tqdm import tqdm

            total = len(self.store.get_round(rnd)["keys"])
            bar = tqdm(total=total, initial=total - len(cands), desc=f"stage 2: round {rnd}", unit="cand", leave=False)
        wanted = {c.key for c in cands}

        def on_result(res: TrainResult) -> None:
            if res.key not in wanted:
                logger.warning("executor returned an unknown candidate %s", res.key)
                return
            if res.ok and (not res.top1 or not all(np.isfinite(res.top1))):
                res = TrainResult(res.key, "failed", list(res.top1), list(res.loss), list(res.epoch_seconds),
                                  "no finite top-1 reported", res.epochs_planned, dict(res.extra))
            self.store.record_result(res)
            wanted.discard(res.key)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(top1=f"{res.final_top1:.2f}" if res.ok else res.status)

        try:
            self.executor().run(cands, epochs, on_result)
        finally:
            if bar is not None:
                bar.close()
        if wanted:
            raise RuntimeError(f"stage 2 round {rnd}: the executor finished without results for {sorted(wanted)}")

    def _check_round(self, rnd: int) -> None:
        """A round may end only with every candidate measured or failed by itself, and at least
        one measured: environment failures stop the run (resume retrains them; going on without
        them would make the result depend on the fault), and a round with nothing measured
        stops it before anything is fitted or published from nothing."""
        rows = self.store.candidates(rnd=rnd)
        retry = [r for r in rows if r["status"] == RETRYABLE]
        if retry:
            raise SearchRunError(
                f"stage 2 round {rnd}: {len(retry)} of {len(rows)} candidates failed because of the environment "
                f"(first: {retry[0]['key']}: {retry[0]['error']}); fix it and continue with --resume {self.run_dir} "
                "(they will be trained again)")
        if not any(r["status"] == "ok" for r in rows):
            errors = sorted({r["error"] or "?" for r in rows})
            raise SearchRunError(
                f"stage 2 round {rnd}: no candidate was measured (all {len(rows)} failed: "
                + "; ".join(e[:200] for e in errors[:3]) + (" ..." if len(errors) > 3 else "")
                + "); the search stops, nothing is published")

    def _refit(self, rnd: int) -> Predictor:
        base = Predictor.from_bytes(self.store.load_checkpoint("stage1"), self.cfg.predictor)
        e = self.target_epoch()
        rows = [r for r in self.store.candidates(status="ok") if r["round"] <= rnd]
        info: Dict[str, Any] = {"round": rnd, "samples": len(rows), "epoch": e}
        if len(rows) >= 2:
            x, y = self.labelled(rows, e)
            rep = base.refit(x, y, seed=self.seed * 1000 + rnd)
            fit = base.predict(x)
            info.update(train_loss=rep.train_loss, train_rank_corr=rank_corr(fit, y, "spearman"))
        self.store.save_checkpoint(f"round{rnd}", base.to_bytes(), info,
                                   progress=(f"stage2_round{rnd:03d}", "done", info))
        return base

    def stage2(self) -> Predictor:
        if self.store.load_checkpoint("stage1") is None:
            raise SearchConfigError("stage 2 needs stage 1's predictor: run stage 1 first")
        self.build_pool()
        rounds = self.cfg.stage2.rounds
        pred = Predictor.from_bytes(self.store.load_checkpoint("stage1"), self.cfg.predictor)
        for rnd in range(1, rounds + 1):
            ck = self.store.load_checkpoint(f"round{rnd}")
            if ck is not None:
                pred = Predictor.from_bytes(ck, self.cfg.predictor)
                continue
            if self.store.get_round(rnd) is None:
                self._select(rnd, pred)
            rec = self.store.get_round(rnd)
            self._train_pending(rnd, rec["epochs"])
            self._check_round(rnd)
            if rec["status"] != "done":
                self.store.finish_round(rnd)
            if rnd == 1 and self.early_stop_epoch() is None:
                self._choose_early_stop()
            pred = self._refit(rnd)
        self.store.set_progress("stage2", "done", {"rounds": rounds})
        return pred

    def _choose_early_stop(self) -> None:
        es = self.cfg.stage2.early_stop
        rows = self.store.candidates(rnd=1, status="ok")
        full = self._full_epochs()
        curves = [r["top1"] for r in rows if len(r["top1"]) >= full]
        if es.enabled and rows and all(len(r["top1"]) <= 1 for r in rows):
            # a table (or any executor reporting final accuracies only): nothing to calibrate on
            self.store.set_progress("early_stop", "done", {
                "epoch": full, "full_epochs": full, "method": es.method, "threshold": es.threshold,
                "correlations": [], "curves": 0,
                "skipped": "no learning curves: the executor reports final accuracies only"})
            return
        if es.enabled:
            e, corrs = select_early_stop_epoch(curves, es.threshold, es.method)
            e = e or full
        else:
            e, corrs = full, []
        self.store.set_progress("early_stop", "done", {"epoch": e, "full_epochs": full, "method": es.method,
                                                       "threshold": es.threshold, "correlations": corrs,
                                                       "curves": len(curves)})

    # ------------------------------------------------------------------ stage 3
    def final_predictor(self) -> Predictor:
        rounds = self.cfg.stage2.rounds
        blob = self.store.load_checkpoint(f"round{rounds}")
        if blob is None:
            raise SearchConfigError("stage 3 needs stage 2's final predictor: run stage 2 first")
        return Predictor.from_bytes(blob, self.cfg.predictor)

    def stage3(self) -> Dict[str, Dict[str, Any]]:
        pred = self.final_predictor()
        pool = self.build_pool()
        e = self.target_epoch()
        measured = [r for r in self.store.candidates(status="ok")]
        if not measured:
            raise SearchRunError("stage 3: no candidate was measured in stage 2; nothing to search from or publish")
        s3 = self.cfg.stage3
        s3_digest = config_digest(self.cfg, ["stage3"])
        ga = AdaptiveGA(self.space, pred, self.encoder, s3)
        pool_scores = pred.predict(self.pool_features)
        out: Dict[str, Dict[str, Any]] = {}
        for ci, c in enumerate(self.constraints):
            label = constraint_label(c)
            done = self.store.get_result(label)
            if done is not None and done.get("stage3_digest", s3_digest) == s3_digest:
                out[label] = done
                continue
            t0 = time.perf_counter()
            ok_measured = sorted((r for r in measured if satisfies(r["flops"], r["params"], c)),
                                 key=lambda r: (-self._target(r, e), r["key"]))
            seeds = [self.space.unit_of(r["values"]) for r in ok_measured[: s3.seeds]]
            fits = [i for i in np.argsort(-pool_scores, kind="stable")
                    if satisfies(pool.flops[i], pool.params[i], c)][: max(0, s3.seeds - len(seeds))]
            seeds += [pool.units[i] for i in fits]
            res = ga.run(c, seeds, seed=self.seed * 7 + ci, progress=self.progress, desc=f"stage 3: {label}")
            best = res.best
            name = arch_name(self.run, label)
            cand = self.space.candidate(best.key, best.values, name=name).to_dict()
            data = {"label": label, "constraint": c, "name": name, "key": best.key, "values": best.values,
                    "arch": cand["arch"], "recipe": cand["recipe"], "flops": best.flops, "params": best.params,
                    "predicted_top1": best.score, "generations": res.generations, "evaluated": res.evaluated,
                    "rejected": res.rejected, "history": res.history, "seconds": time.perf_counter() - t0,
                    "best_measured": ({"key": ok_measured[0]["key"], "top1": self._target(ok_measured[0], e),
                                       "flops": ok_measured[0]["flops"], "params": ok_measured[0]["params"]}
                                      if ok_measured else None), "stage3_digest": s3_digest}
            self.store.set_result(label, data)
            out[label] = data
        self.store.set_progress("stage3", "done", {"constraints": [constraint_label(c) for c in self.constraints]})
        return out

    # ------------------------------------------------------------------ outputs
    def write_outputs(self, results: Mapping[str, Mapping[str, Any]], install_dir: Optional[str] = None
                      ) -> List[Dict[str, Any]]:
        """Arch + recipe YAML per winner (and family members) in the run dir; optionally install."""
        if not self.space.zoo_archs:  # e.g. NAS-Bench-201 cells: the space writes its own winners
            return [{**self.space.write_winner(d["values"], d["name"], self.run_dir), "origin": "searched",
                     "constraint": label} for label, d in results.items()]
        from fbnet_zoo.spec import ArchSpec

        arch_dir = os.path.join(self.run_dir, "archs")
        recipe_dir = os.path.join(self.run_dir, "recipes")
        os.makedirs(arch_dir, exist_ok=True)
        os.makedirs(recipe_dir, exist_ok=True)
        written = []
        winners = []
        for label, data in results.items():
            arch = ArchSpec.from_dict(data["arch"])
            recipe = Recipe.from_dict(data["recipe"])
            winners.append((data["flops"], arch, recipe, data))
        members = [(a, r, "searched", d["label"]) for _, a, r, d in winners]
        family = self.cfg.family.derived
        if family is not None:
            members += family.derive([(f, a, r, d["label"]) for f, a, r, d in winners])
        from fbnet_zoo.complexity import complexity

        for arch, recipe, origin, label in members:
            ap = output_file(arch_dir, arch.name, ".yaml", what="winner name")
            rp = output_file(recipe_dir, arch.name, ".yaml", what="winner name")
            arch.save_yaml(ap)
            recipe.save_yaml(rp)
            cx = complexity(arch, None, self.space.num_classes, self.space.flops_convention)
            written.append({"name": arch.name, "arch_yaml": ap, "recipe_yaml": rp, "origin": origin,
                            "constraint": label, "flops": cx.flops, "params": cx.params})
        if install_dir:
            from fbnet_zoo.registry import register_arch_dir

            for arch, _, _, _ in members:
                arch.save_yaml(output_file(install_dir, arch.name, ".yaml", what="winner name"))
            register_arch_dir(install_dir)
        else:
            from fbnet_zoo.registry import register_arch

            for w in written:
                register_arch(w["arch_yaml"], overwrite=True)
        return written


def _check_install_dir(path: Optional[str]) -> None:
    """An install dir that is a file fails before anything trains (it failed when the winners
    were copied, reported as an environment failure)."""
    if path and os.path.exists(path) and not os.path.isdir(path):
        raise SearchConfigError(f"--install-dir / output.install_dir: {path!r} is a file, not a folder")


def run_search(cfg: Optional[SearchConfig], run_dir: str, *, resume: bool = False,
               stages: Sequence[int] = (1, 2, 3), progress: bool = False, executor: Any = None,
               executor_kind: Optional[str] = None, ray_address: Optional[str] = None,
               install_dir: Optional[str] = None, report: bool = True) -> Dict[str, Any]:
    """Run (or resume) the stages of a search; returns a summary dict."""
    _check_install_dir(install_dir or (cfg.output.install_dir if cfg is not None else None))
    run = SearchRun(cfg, run_dir, resume=resume, progress=progress, executor=executor,
                    executor_kind=executor_kind, ray_address=ray_address)
    summary: Dict[str, Any] = {"run_dir": run_dir, "run": run.run}
    try:
        _check_install_dir(install_dir or run.cfg.output.install_dir)  # a resumed run's stored one
        timings = {}
        if 2 in stages and (run.store.get_progress("stage2") or {}).get("status") != "done":
            run.check_data()
        if 1 in stages:
            t0 = time.perf_counter()
            run.stage1()
            timings["stage1"] = time.perf_counter() - t0
        if 2 in stages:
            t0 = time.perf_counter()
            run.stage2()
            timings["stage2"] = time.perf_counter() - t0
        if 3 in stages:
            t0 = time.perf_counter()
            results = run.stage3()
            summary["results"] = results
            summary["outputs"] = run.write_outputs(results, install_dir or run.cfg.output.install_dir)
            timings["stage3"] = time.perf_counter() - t0
        summary["timings"] = timings
        if report:
            summary["report"] = write_report(run, summary.get("outputs"))
    except (sqlite3.OperationalError, OSError) as e:  # the driver's own disk / store failed (ENOSPC, I/O)
        raise SearchRunError(f"run dir {run_dir!r}: the environment failed while the run was writing "
                             f"({type(e).__name__}: {e}); fix it and continue with --resume {run_dir}") from e
    finally:
        run.close()
    return summary
