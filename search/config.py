"""Search configuration: a YAML file (or the embedded default) plus dotted overrides.

A search config is one mapping::

    name: default             # run name; winners are called fbnetv3_search_<name>_<constraint>
    seed: 0                   # every random choice of the run derives from it
    mode: joint               # joint | recipe_only | arch_only
    flops_convention: fvcore  # how FLOPs/params are counted: fvcore | paper (fbnet_zoo.conventions)
    space: {...}              # the search space (see space.py)
    fixed_arch: null          # recipe_only: zoo name, YAML path or arch mapping
    pool: {...}               # stage 1: Sobol pool size and FLOPs window
    predictor: {...}          # MLP sizes, pretraining and refit schedules
    stage2: {...}             # rounds T, candidates per round m, epochs, early stop
    stage3: {...}             # constraints and the adaptive GA's settings
    family: {...}             # models derived from the winners by scaling (see family.py)
    executor: {...}           # kind (any registered: local | ray | oracle | ...), ray_address
    train: {...}              # passed through to candidate training (TrainSettings)
    oracle: {...}             # the synthetic trainer (executor kind "oracle")
    bench: {...}              # the benchmark table (executor kind "table"): table, dataset, source
    output: {...}             # install_dir: also copy winners into a user arch dir

Every problem raises ``SearchConfigError`` naming the dotted key, the bad value and what is
allowed; unknown keys are errors. ``load_config(path, overrides)`` is the one entry point.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import yaml

from fbnet_zoo.conventions import CONVENTIONS
from fbnet_zoo.errors import FBNetZooError, SearchConfigError  # noqa: F401 - SearchConfigError re-exported

from .executors import executor_kinds
from .family import DEFAULT_RULE, parse_family

MODES = ("joint", "recipe_only", "arch_only")
RANK_METHODS = ("kendall", "spearman")
CONSTRAINT_KEYS = ("flops", "params")
SEED_MAX = 2 ** 32 - 1  # numpy's SeedSequence/legacy seeding and Sobol scrambling take 32-bit seeds
# Sections that only stage 3 and the outputs read: changing them on --resume invalidates no
# training (stage-3 results are recomputed when they change); every other section is fixed.
STAGE3_SECTIONS = ("stage3", "family", "output")
PLACEMENT_SECTIONS = ("executor",)  # where candidates train: free to change on resume


class SearchRunError(FBNetZooError):
    """A run that cannot go on: nothing measured, environment failures to retry, a locked or broken run dir."""


# Defaults: the schema. A key present here is allowed; its default's type is checked.
# ``None`` defaults accept anything of the listed types in _NULLABLE.
DEFAULTS: Dict[str, Any] = {
    "name": "search",
    "seed": 0,
    "mode": "joint",
    "flops_convention": "fvcore",
    "space": None,
    "fixed_arch": None,
    "pool": {"n": 20000, "flops_min": None, "flops_max": None, "params_min": None, "params_max": None,
             "max_draw_factor": 20},
    "predictor": {
        "hidden": [256, 256],
        "head_hidden": 64,
        "pretrain": True,
        "pretrain_epochs": 30,
        "pretrain_lr": 3e-3,
        "batch_size": 512,
        "val_fraction": 0.2,
        "refit_frozen_epochs": 50,
        "refit_full_epochs": 50,
        "refit_lr": 3e-3,
        "refit_full_lr_factor": 0.1,
        "refit_batch_size": 32,
        "huber_delta": 1.0,
        "weight_decay": 1e-4,
    },
    "stage2": {
        "rounds": 5,
        "m": 48,
        "epochs": None,
        "early_stop": {"enabled": True, "method": "kendall", "threshold": 0.92},
    },
    "stage3": {
        "constraints": [],
        "population": 64,
        "top_k": 32,
        "seeds": 16,
        "max_generations": 100,
        "patience": 10,
        "tol": 1e-4,
        "k1": 1.0, "k2": 0.5, "k3": 1.0, "k4": 0.5,
        "max_tries": 20,
    },
    "family": {"enabled": False, "rule": dict(DEFAULT_RULE), "members": []},
    "executor": {"kind": "local", "ray_address": None, "num_cpus_per_candidate": 1.0,
                 "num_gpus_per_candidate": 0.0, "max_retries": 2},
    "train": {},
    "oracle": {"seed": 0, "hidden": 32, "noise": 0.6, "delay_s": 0.0},
    # executor kind "table": look-ups in a benchmark table (search/tabular.py); table null: the packaged one
    "bench": {"table": None, "dataset": "cifar10", "source": "csv"},
    "output": {"install_dir": None},
}

# keys whose value is free-form (validated elsewhere): the space, train settings, fixed arch
_FREE = {"space", "train", "fixed_arch"}
_NULLABLE = {
    "pool.flops_min": (int, float), "pool.flops_max": (int, float), "pool.params_min": (int, float),
    "pool.params_max": (int, float), "stage2.epochs": (int,), "executor.ray_address": (str,),
    "output.install_dir": (str,),
    "bench.table": (str,),
}


def _fail(key: str, value: Any, allowed: str) -> SearchConfigError:
    return SearchConfigError(f"{key}: {value!r} {allowed}")


def _merge(base: Dict[str, Any], update: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in update.items():
        key = f"{prefix}{k}"
        if not isinstance(k, str):
            raise _fail(key, k, "is not a string key")
        if k not in base:
            raise SearchConfigError(f"{key}: unknown key; allowed: {sorted(base)}")
        if isinstance(base[k], dict) and base[k] and key not in _FREE and isinstance(v, Mapping):
            out[k] = _merge(base[k], v, key + ".")
        elif isinstance(base[k], dict) and base[k] and key not in _FREE and v is not None:
            raise _fail(key, v, "is not a mapping")
        else:
            out[k] = copy.deepcopy(v)
    return out


def _check_types(cfg: Mapping[str, Any], schema: Mapping[str, Any], prefix: str = "") -> None:
    for k, default in schema.items():
        key = f"{prefix}{k}"
        v = cfg[k]
        if key in _FREE:
            continue
        if isinstance(default, dict) and default:
            _check_types(v, default, key + ".")
            continue
        if default is None:
            types = _NULLABLE.get(key)
            if v is not None and types is not None and (isinstance(v, bool) or not isinstance(v, types)):
                raise _fail(key, v, f"is not null or of type {'/'.join(t.__name__ for t in types)}")
            continue
        if isinstance(default, bool):
            if not isinstance(v, bool):
                raise _fail(key, v, "is not a boolean (true/false)")
        elif isinstance(default, int):
            if isinstance(v, bool) or not isinstance(v, int):
                raise _fail(key, v, "is not an integer")
        elif isinstance(default, float):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise _fail(key, v, "is not a finite number")
        elif isinstance(default, str):
            if not isinstance(v, str):
                raise _fail(key, v, "is not a string")
        elif isinstance(default, list):
            if not isinstance(v, list):
                raise _fail(key, v, "is not a list")


def _positive(cfg: Mapping[str, Any], key: str, minimum: float = 1) -> None:
    v = get(cfg, key)
    if v < minimum:
        raise _fail(key, v, f"is below the minimum {minimum}")


def get(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def parse_constraint(text: Union[str, Mapping[str, Any], float, int]) -> Dict[str, float]:
    """A constraint from config or the command line.

    Mapping form: ``{flops: 450e6}``, ``{flops: 450e6, params: 9e6}`` (upper bounds).
    String form: ``flops<=450M``, ``450M`` (FLOPs), ``params<=9.5M``, ``flops<=450M&params<=9M``.
    Suffixes K, M, G scale by 1e3, 1e6, 1e9.
    """
    if isinstance(text, Mapping):
        unknown = [k for k in text if k not in CONSTRAINT_KEYS]
        if unknown:
            raise _fail(f"constraint.{unknown[0]}", text[unknown[0]], f"is not a known resource; allowed: {list(CONSTRAINT_KEYS)}")
        if not text:
            raise _fail("constraint", dict(text), f"is empty; give at least one of {list(CONSTRAINT_KEYS)}")
        out = {}
        for k, v in text.items():
            out[k] = _constraint_value(f"constraint.{k}", v)
        return out
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return {"flops": _constraint_value("constraint.flops", text)}
    if not isinstance(text, str):
        raise _fail("constraint", text, "is not a mapping, number or string like 'flops<=450M'")
    out = {}
    for part in text.replace(" ", "").split("&"):
        if "<=" in part:
            k, v = part.split("<=", 1)
        else:
            k, v = "flops", part
        if k not in CONSTRAINT_KEYS:
            raise _fail("constraint", text, f"names unknown resource {k!r}; allowed: {list(CONSTRAINT_KEYS)}")
        out[k] = _constraint_value(f"constraint.{k}", v)
    return out


def _constraint_value(key: str, v: Any) -> float:
    if isinstance(v, str):
        s = v.strip().upper()
        mult = {"K": 1e3, "M": 1e6, "G": 1e9}.get(s[-1:], 1.0)
        if s[-1:] in "KMG":
            s = s[:-1]
        try:
            v = float(s) * mult
        except ValueError:
            raise _fail(key, v, "is not a number (suffixes K/M/G allowed)") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise _fail(key, v, "is not a positive number")
    return float(v)


def constraint_label(c: Mapping[str, float]) -> str:
    """'450m' for {flops: 450e6}; '450m_9mp' with a params bound."""
    parts = []
    if "flops" in c:
        parts.append(f"{c['flops'] / 1e6:g}m")
    if "params" in c:
        parts.append(f"{c['params'] / 1e6:g}mp")
    return "_".join(parts).replace(".", "p")


def _validate(cfg: Dict[str, Any]) -> None:
    _check_types(cfg, DEFAULTS)
    if not cfg["name"] or not all(ch.isalnum() or ch in "_-" for ch in cfg["name"]):
        raise _fail("name", cfg["name"], "is not a non-empty name of letters, digits, '_' or '-'")
    if cfg["mode"] not in MODES:
        raise _fail("mode", cfg["mode"], f"is not one of {list(MODES)}")
    if cfg["mode"] == "recipe_only" and cfg["fixed_arch"] is None:
        raise _fail("fixed_arch", None, "is required in mode 'recipe_only' (a zoo name, YAML path or arch mapping)")
    for key in ("seed", "oracle.seed"):
        if not 0 <= get(cfg, key) <= SEED_MAX:
            raise _fail(key, get(cfg, key), f"is outside [0, {SEED_MAX}] (2**32 - 1)")
    if cfg["executor"]["kind"] not in executor_kinds():
        raise _fail("executor.kind", cfg["executor"]["kind"], f"is not a registered executor kind; registered: "
                    f"{executor_kinds()}")
    if not isinstance(cfg["train"], dict):
        raise _fail("train", cfg["train"], "is not a mapping")
    for key in ("pool.n", "pool.max_draw_factor", "predictor.pretrain_epochs",
                "predictor.batch_size", "predictor.refit_batch_size", "predictor.head_hidden",
                "stage2.rounds", "stage2.m", "stage3.population", "stage3.top_k", "stage3.seeds",
                "stage3.max_generations", "stage3.patience", "stage3.max_tries"):
        _positive(cfg, key)
    for key in ("predictor.refit_frozen_epochs", "predictor.refit_full_epochs"):
        _positive(cfg, key, 0)
    for key in ("predictor.pretrain_lr", "predictor.refit_lr", "predictor.refit_full_lr_factor",
                "predictor.huber_delta"):
        if get(cfg, key) <= 0:
            raise _fail(key, get(cfg, key), "is not a positive number")
    if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in cfg["predictor"]["hidden"]) \
            or not cfg["predictor"]["hidden"]:
        raise _fail("predictor.hidden", cfg["predictor"]["hidden"], "is not a non-empty list of positive integers")
    vf = cfg["predictor"]["val_fraction"]
    if not 0 < vf < 1:
        raise _fail("predictor.val_fraction", vf, "is outside (0, 1)")
    if cfg["stage2"]["epochs"] is not None and cfg["stage2"]["epochs"] < 1:
        raise _fail("stage2.epochs", cfg["stage2"]["epochs"], "is below the minimum 1")
    es = cfg["stage2"]["early_stop"]
    if es["method"] not in RANK_METHODS:
        raise _fail("stage2.early_stop.method", es["method"], f"is not one of {list(RANK_METHODS)}")
    if not -1 <= es["threshold"] <= 1:
        raise _fail("stage2.early_stop.threshold", es["threshold"], "is outside [-1, 1]")
    budget = cfg["stage2"]["rounds"] * cfg["stage2"]["m"]
    if cfg["pool"]["n"] < budget:
        raise _fail("pool.n", cfg["pool"]["n"], f"is below stage2.rounds x stage2.m = {budget} (candidates to train)")
    for key in ("executor.num_cpus_per_candidate", "executor.num_gpus_per_candidate"):
        if get(cfg, key) < 0:
            raise _fail(key, get(cfg, key), "is negative")
    if cfg["stage3"]["top_k"] > cfg["stage3"]["population"]:
        raise _fail("stage3.top_k", cfg["stage3"]["top_k"], f"exceeds stage3.population ({cfg['stage3']['population']})")
    for k in ("k1", "k2", "k3", "k4"):
        if not 0 <= cfg["stage3"][k] <= 1:
            raise _fail(f"stage3.{k}", cfg["stage3"][k], "is outside [0, 1]")
    for lo, hi in (("flops_min", "flops_max"), ("params_min", "params_max")):
        a, b = cfg["pool"][lo], cfg["pool"][hi]
        for key, v in ((lo, a), (hi, b)):
            if v is not None and v < 0:
                raise _fail(f"pool.{key}", v, "is negative")
        if a is not None and b is not None and a > b:
            raise SearchConfigError(f"pool.{lo}/{hi}: ({a!r}, {b!r}) is an empty (inverted) range")
    if not isinstance(cfg["stage3"]["constraints"], list):
        raise _fail("stage3.constraints", cfg["stage3"]["constraints"], "is not a list")
    cfg["stage3"]["constraints"] = [parse_constraint(c) for c in cfg["stage3"]["constraints"]]
    if cfg["flops_convention"] not in CONVENTIONS:
        raise _fail("flops_convention", cfg["flops_convention"], f"is not one of {sorted(CONVENTIONS)}")
    if cfg["oracle"]["delay_s"] < 0:
        raise _fail("oracle.delay_s", cfg["oracle"]["delay_s"], "is negative")
    if cfg["bench"]["source"] not in ("csv", "nats_bench", "nas_201_api"):
        raise _fail("bench.source", cfg["bench"]["source"], "is not one of ['csv', 'nats_bench', 'nas_201_api']")
    if not cfg["bench"]["dataset"]:
        raise _fail("bench.dataset", cfg["bench"]["dataset"], "is not a dataset name (e.g. cifar10, cifar100)")
    if cfg["space"] is None:
        raise _fail("space", None, "is missing: a search config needs a space")
    # the space and the family validate themselves (ranges, choices, ties, specs it can produce)
    from .spaces import make_space

    parse_family(cfg["family"])
    make_space(cfg)


# --------------------------------------------------------------------------- overrides
def parse_override(item: str) -> tuple:
    if "=" not in item:
        raise _fail("override", item, "is not of the form dotted.key=value")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise _fail("override", item, "has an empty key part")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise _fail(key, text, f"is not a valid YAML value ({e.__class__.__name__})") from None
    return key, value


def apply_overrides(raw: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Set ``a.b.c=value`` items (values parsed as YAML) on a raw config mapping."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        node = raw
        schema: Any = DEFAULTS
        for i, part in enumerate(parts[:-1]):
            path = ".".join(parts[: i + 1])
            free = parts[0] in _FREE  # free-form sections validate themselves
            if not free and (not isinstance(schema, dict) or part not in schema):
                raise SearchConfigError(f"{path}: unknown key in override {item!r}")
            if part not in node or node[part] is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise _fail(path, node[part], f"is not a mapping; cannot set {key}")
            node = node[part]
            schema = schema.get(part) if isinstance(schema, dict) else None
        last = parts[-1]
        if not (parts[0] in _FREE) and (not isinstance(schema, dict) or last not in schema):
            raise SearchConfigError(f"{key}: unknown key in override {item!r}")
        node[last] = value
    return raw


# --------------------------------------------------------------------------- loading
def config_dir() -> str:
    import fbnet_zoo.model_configs as mc

    return os.path.join(os.path.dirname(os.path.abspath(mc.__file__)), "search")


def resolve_config_path(path: Optional[str]) -> str:
    if path is None:
        return os.path.join(config_dir(), "default.yaml")
    if os.path.exists(path):
        return path
    for name in (path, f"{path}.yaml"):
        cand = os.path.join(config_dir(), name)
        if os.path.exists(cand):
            return cand
    shipped = sorted(n[:-5] for n in os.listdir(config_dir()) if n.endswith(".yaml"))
    raise _fail("config", path, f"is not a file nor a shipped config; shipped: {shipped}")


def read_raw(path: Optional[str]) -> Dict[str, Any]:
    from iopath.common.file_io import g_pathmgr

    p = resolve_config_path(path)
    try:
        with g_pathmgr.open(p, "r") as f:
            data = yaml.safe_load(f.read())
    except yaml.YAMLError as e:
        raise SearchConfigError(f"{p}: not valid YAML ({e})") from None
    except UnicodeDecodeError as e:
        raise SearchConfigError(f"{p}: not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at offset "
                                f"{e.start}); a search config is a UTF-8 YAML file") from None
    except OSError as e:
        raise SearchConfigError(f"{p}: cannot read ({e})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _fail(p, type(data).__name__, "is not a mapping at the top level")
    return data


def build_config(raw: Mapping[str, Any]) -> Dict[str, Any]:
    """Validated full config (defaults filled in) from a raw mapping."""
    if not isinstance(raw, Mapping):
        raise _fail("config", raw, "is not a mapping")
    cfg = _merge(DEFAULTS, raw)
    _validate(cfg)
    return cfg


def load_config(path: Optional[str] = None, overrides: Sequence[str] = (),
                constraints: Optional[Sequence[str]] = None, base: Optional[Mapping[str, Any]] = None
                ) -> Dict[str, Any]:
    """Load ``path`` (None: the embedded default; a shipped name like 'cifar10' works too),
    apply dotted ``overrides`` and optional command-line ``constraints``; validate.
    ``base``: start from this config mapping instead of a file (a resumed run's stored config)."""
    raw = apply_overrides(read_raw(path) if base is None else dict(base), overrides)
    if constraints is not None:
        raw.setdefault("stage3", {})
        raw["stage3"]["constraints"] = list(constraints)
    return build_config(raw)


def config_digest(cfg: Mapping[str, Any], sections: Optional[Sequence[str]] = None) -> str:
    """Digest of what a resumed run must keep: every section that decides what is trained
    (pool, predictor, stage 2, train, space, seed, ...). Placement (executor) and the stage-3
    sections are left out; ``sections`` digests just those sections instead."""
    if sections is None:
        d = {k: v for k, v in cfg.items() if k not in PLACEMENT_SECTIONS + STAGE3_SECTIONS}
    else:
        d = {k: cfg.get(k) for k in sections}
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def diff_configs(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> List[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        key = f"{prefix}{k}"
        va, vb = a.get(k, "<missing>"), b.get(k, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_configs(va, vb, key + ".")
        elif json.dumps(va, sort_keys=True, default=str) != json.dumps(vb, sort_keys=True, default=str):
            out.append(f"{key}: {va!r} != {vb!r}")
    return out
