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
    train: {...}              # candidate training: the keys of TrainSettings
    oracle: {...}             # the synthetic trainer (executor kind "oracle")
    bench: {...}              # the benchmark table (executor kind "table"): table, dataset, source
    output: {...}             # install_dir: also copy winners into a user arch dir

It loads into a ``SearchConfig``: one frozen dataclass per section (``PoolConfig``,
``PredictorConfig``, ``Stage2Config``, ...), each validated once, when it is built, with
the shared validators of ``fbnet_zoo.errors``; readers use attributes (``cfg.stage2.m``).
Loading also builds the ``SearchSpace`` once (``cfg.search_space``), which the run uses.
``to_dict()`` is what the run store keeps and digests; ``DEFAULTS`` (the schema as a
mapping) is derived from the dataclasses.

Every problem raises ``SearchConfigError`` naming the dotted key, the bad value and what is
allowed; unknown keys are errors. ``load_config(path, overrides)`` is the one entry point.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from fbnet_zoo.conventions import CONVENTIONS
from fbnet_zoo.errors import (FBNetZooError, SearchConfigError, TrainConfigError, check_bool, check_choice, check_int,
                              check_number, show_value)
from fbnet_zoo.training.recipe import dataclass_kwargs
from fbnet_zoo.training.settings import TrainSettings

from .executors import executor_kinds
from .family import DEFAULT_RULE, Family, parse_family
from .spaces import Space, make_space
from .tabular import SOURCES as TABLE_SOURCES

MODES = ("joint", "recipe_only", "arch_only")
RANK_METHODS = ("kendall", "spearman")
REFIT_MODELS = ("mlp", "proxy_ridge")
CONSTRAINT_KEYS = ("flops", "params")
SEED_MAX = 2 ** 32 - 1  # numpy's SeedSequence/legacy seeding and Sobol scrambling take 32-bit seeds
# Sections that only stage 3 and the outputs read: changing them on --resume invalidates no
# training (stage-3 results are recomputed when they change); every other section is fixed.
STAGE3_SECTIONS = ("stage3", "family", "output")
PLACEMENT_SECTIONS = ("executor",)  # where candidates train: free to change on resume


class SearchRunError(FBNetZooError):
    """A run that cannot go on: nothing measured, environment failures to retry, a locked or broken run dir."""


# --------------------------------------------------------------------------- sections
def _seed(path: str, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= SEED_MAX:
        raise SearchConfigError(f"{path}: {value!r} is outside [0, {SEED_MAX}] (2**32 - 1)")
    check_int(path, value, 0, SEED_MAX, error=SearchConfigError)


def _positive_number(path: str, value: Any) -> None:
    check_number(path, value, 0.0, error=SearchConfigError)


def _plain(value: Any) -> Any:
    """A section as the JSON-able mapping the run store keeps (values exactly as given)."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


class _Section:
    """A config section: ``from_mapping`` refuses unknown keys (naming the dotted path) and
    builds nested sections; the dataclass's ``__post_init__`` checks values and types."""

    PATH: ClassVar[str] = ""
    NESTED: ClassVar[Dict[str, type]] = {}

    @classmethod
    def from_mapping(cls, data: Any, path: Optional[str] = None):
        path = path or cls.PATH
        kwargs = dataclass_kwargs(cls, data, path, SearchConfigError)
        for name, sub in cls.NESTED.items():
            if name in kwargs:
                kwargs[name] = sub.from_mapping(kwargs[name], f"{path}.{name}")
        return cls(**kwargs)

    def to_dict(self) -> Dict[str, Any]:
        return _plain(self)


@dataclass(frozen=True)
class PoolConfig(_Section):
    """Stage 1: the Sobol pool's size and the FLOPs / params window its candidates must fall in."""

    PATH: ClassVar[str] = "pool"
    n: int = 20000
    flops_min: Optional[float] = None
    flops_max: Optional[float] = None
    params_min: Optional[float] = None
    params_max: Optional[float] = None
    max_draw_factor: int = 20

    def __post_init__(self) -> None:
        check_int("pool.n", self.n, error=SearchConfigError)
        check_int("pool.max_draw_factor", self.max_draw_factor, error=SearchConfigError)
        for lo, hi in (("flops_min", "flops_max"), ("params_min", "params_max")):
            for name in (lo, hi):  # the forms a constraint takes too: 4.5e8, "450M", "4.5e8"
                value = getattr(self, name)
                if value is not None:
                    parsed = cost_value(f"pool.{name}", value, positive=False)
                    if isinstance(value, str):
                        object.__setattr__(self, name, parsed)
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise SearchConfigError(f"pool.{lo}/{hi}: ({a!r}, {b!r}) is an empty (inverted) range")

    def contains(self, flops: float, params: float) -> bool:
        """Whether a candidate's cost lies in the window (None: unbounded)."""
        return ((self.flops_min is None or flops >= self.flops_min)
                and (self.flops_max is None or flops <= self.flops_max)
                and (self.params_min is None or params >= self.params_min)
                and (self.params_max is None or params <= self.params_max))


@dataclass(frozen=True)
class PredictorConfig(_Section):
    """The MLP predictor: sizes, stage-1 pretraining and stage-2 refit schedules."""

    PATH: ClassVar[str] = "predictor"
    hidden: Tuple[int, ...] = (256, 256)
    head_hidden: int = 64
    pretrain: bool = True
    pretrain_epochs: int = 30
    pretrain_lr: float = 3e-3
    batch_size: int = 512
    val_fraction: float = 0.2
    refit_frozen_epochs: int = 50
    refit_full_epochs: int = 50
    refit_lr: float = 3e-3
    refit_full_lr_factor: float = 0.1
    refit_batch_size: int = 32
    huber_delta: float = 1.0
    weight_decay: float = 1e-4
    # "mlp": stage 2 refits the accuracy head of the MLP (the paper's predictor). "proxy_ridge":
    # a ridge regression on the pretrained proxy head's outputs and the recipe features, for
    # the few-label regime (search/predictor.py, ProxyRidge).
    refit_model: str = "mlp"

    def __post_init__(self) -> None:
        p = "predictor."
        if not isinstance(self.hidden, (list, tuple)) or not self.hidden or not all(
                isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in self.hidden):
            raise SearchConfigError(f"{p}hidden: {show_value(self.hidden)} is not a non-empty list of positive "
                                    "integers")
        object.__setattr__(self, "hidden", tuple(self.hidden))
        check_bool(p + "pretrain", self.pretrain, error=SearchConfigError)
        for name in ("head_hidden", "pretrain_epochs", "batch_size", "refit_batch_size"):
            check_int(p + name, getattr(self, name), error=SearchConfigError)
        for name in ("refit_frozen_epochs", "refit_full_epochs"):
            check_int(p + name, getattr(self, name), 0, error=SearchConfigError)
        for name in ("pretrain_lr", "refit_lr", "refit_full_lr_factor", "huber_delta"):
            _positive_number(p + name, getattr(self, name))
        check_number(p + "weight_decay", self.weight_decay, 0.0, lo_open=False, error=SearchConfigError)
        check_number(p + "val_fraction", self.val_fraction, 0.0, 1.0, hi_open=True, error=SearchConfigError)
        check_choice(p + "refit_model", self.refit_model, REFIT_MODELS, error=SearchConfigError)
        if self.refit_model == "proxy_ridge" and not self.pretrain:
            raise SearchConfigError(f"{p}refit_model: 'proxy_ridge' regresses on the pretrained proxy head's "
                                    "outputs, so it needs predictor.pretrain: true (or refit_model: mlp)")


@dataclass(frozen=True)
class EarlyStopConfig(_Section):
    """Stage 2's early-stop epoch: the first epoch whose ranking agrees with the full one."""

    PATH: ClassVar[str] = "stage2.early_stop"
    enabled: bool = True
    method: str = "kendall"
    threshold: float = 0.92

    def __post_init__(self) -> None:
        check_bool(self.PATH + ".enabled", self.enabled, error=SearchConfigError)
        check_choice(self.PATH + ".method", self.method, RANK_METHODS, error=SearchConfigError)
        check_number(self.PATH + ".threshold", self.threshold, -1.0, 1.0, lo_open=False, error=SearchConfigError)


@dataclass(frozen=True)
class Stage2Config(_Section):
    """Stage 2: ``rounds`` rounds of ``m`` trained candidates (``epochs``: None = the recipe's).

    Rounds after the first take the best-predicted unmeasured pool candidates; with
    ``local_fraction`` > 0 that share of each such round instead takes the best-predicted
    unmeasured mutants (one change each) of the ``local_parents`` best measured candidates:
    exploitation around what was measured, as stage 3 evolves from the best, so that a
    predictor confidently wrong about one region cannot hold the whole budget there (a best
    candidate whose mutants were all measured gives way to the next). 0.0 (the default) is
    the plain top-m-predicted selection. The NAS-Bench-201 benchmark's table version
    (``baselines.nars``) enumerates every one-edge neighbour and tries the least-tried
    (parent, edge) first."""

    PATH: ClassVar[str] = "stage2"
    NESTED: ClassVar[Dict[str, type]] = {"early_stop": EarlyStopConfig}
    rounds: int = 5
    m: int = 48
    epochs: Optional[int] = None
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    local_fraction: float = 0.0
    local_parents: int = 5

    def __post_init__(self) -> None:
        check_int("stage2.rounds", self.rounds, error=SearchConfigError)
        check_int("stage2.m", self.m, error=SearchConfigError)
        check_number("stage2.local_fraction", self.local_fraction, 0.0, 1.0, lo_open=False, error=SearchConfigError)
        check_int("stage2.local_parents", self.local_parents, error=SearchConfigError)
        if self.epochs is not None:
            check_int("stage2.epochs", self.epochs, error=SearchConfigError)
        if not isinstance(self.early_stop, EarlyStopConfig):
            raise SearchConfigError(f"stage2.early_stop: {show_value(self.early_stop)} is not an EarlyStopConfig")

    @property
    def budget(self) -> int:
        """Candidates stage 2 trains."""
        return self.rounds * self.m


@dataclass(frozen=True)
class Stage3Config(_Section):
    """Stage 3: the constraints (parsed, see ``parse_constraint``) and the adaptive GA's settings."""

    PATH: ClassVar[str] = "stage3"
    constraints: Tuple[Dict[str, float], ...] = ()
    population: int = 64
    top_k: int = 32
    seeds: int = 16
    max_generations: int = 100
    patience: int = 10
    tol: float = 1e-4
    k1: float = 1.0
    k2: float = 0.5
    k3: float = 1.0
    k4: float = 0.5
    max_tries: int = 20

    def __post_init__(self) -> None:
        if not isinstance(self.constraints, (list, tuple)):
            raise SearchConfigError(f"stage3.constraints: {show_value(self.constraints)} is not a list")
        object.__setattr__(self, "constraints", tuple(parse_constraint(c, f"stage3.constraints[{i}]")
                                                          for i, c in enumerate(self.constraints)))
        for name in ("population", "top_k", "seeds", "max_generations", "patience", "max_tries"):
            check_int(f"stage3.{name}", getattr(self, name), error=SearchConfigError)
        check_number("stage3.tol", self.tol, -math.inf, error=SearchConfigError)
        for name in ("k1", "k2", "k3", "k4"):
            check_number(f"stage3.{name}", getattr(self, name), 0.0, 1.0, lo_open=False, error=SearchConfigError)
        if self.top_k > self.population:
            raise SearchConfigError(f"stage3.top_k: {self.top_k!r} exceeds stage3.population ({self.population})")


@dataclass(frozen=True)
class FamilyRule(_Section):
    """The compound-scaling bases: depth alpha^phi, width beta^phi, resolution gamma^phi."""

    PATH: ClassVar[str] = "family.rule"
    alpha: float = DEFAULT_RULE["alpha"]
    beta: float = DEFAULT_RULE["beta"]
    gamma: float = DEFAULT_RULE["gamma"]

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _positive_number(f"{self.PATH}.{f.name}", getattr(self, f.name))


@dataclass(frozen=True)
class FamilyConfig(_Section):
    """Models derived from the stage-3 winners by scaling (``members``: see family.py, which
    validates them); ``derived`` is the parsed family, None when disabled."""

    PATH: ClassVar[str] = "family"
    NESTED: ClassVar[Dict[str, type]] = {"rule": FamilyRule}
    enabled: bool = False
    rule: FamilyRule = field(default_factory=FamilyRule)
    members: Tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.rule, FamilyRule):
            raise SearchConfigError(f"family.rule: {show_value(self.rule)} is not a FamilyRule")
        if isinstance(self.members, (list, tuple)):
            object.__setattr__(self, "members", tuple(copy.deepcopy(list(self.members))))
        object.__setattr__(self, "_derived", parse_family(self.to_dict(), self.PATH))

    @property
    def derived(self) -> Optional[Family]:
        return self._derived


@dataclass(frozen=True)
class ExecutorConfig(_Section):
    """Where candidates train: any registered executor kind and its resources."""

    PATH: ClassVar[str] = "executor"
    kind: str = "local"
    ray_address: Optional[str] = None
    num_cpus_per_candidate: float = 1.0
    num_gpus_per_candidate: float = 0.0
    max_retries: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in executor_kinds():
            raise SearchConfigError(f"executor.kind: {show_value(self.kind)} is not a registered executor kind; "
                                    f"registered: {executor_kinds()}")
        if self.ray_address is not None and not isinstance(self.ray_address, str):
            raise SearchConfigError(f"executor.ray_address: {show_value(self.ray_address)} is not null or a string")
        for name in ("num_cpus_per_candidate", "num_gpus_per_candidate"):
            check_number(f"executor.{name}", getattr(self, name), 0.0, lo_open=False, error=SearchConfigError)
        check_int("executor.max_retries", self.max_retries, 0, error=SearchConfigError)


@dataclass(frozen=True)
class OracleConfig(_Section):
    """The synthetic trainer (executor kind ``oracle``)."""

    PATH: ClassVar[str] = "oracle"
    seed: int = 0
    hidden: int = 32
    noise: float = 0.6
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        _seed("oracle.seed", self.seed)
        check_int("oracle.hidden", self.hidden, error=SearchConfigError)
        check_number("oracle.noise", self.noise, 0.0, lo_open=False, error=SearchConfigError)
        check_number("oracle.delay_s", self.delay_s, 0.0, lo_open=False, error=SearchConfigError)


@dataclass(frozen=True)
class BenchConfig(_Section):
    """Executor kind ``table``: look-ups in a benchmark table (search/tabular.py); ``table``
    null: the packaged one."""

    PATH: ClassVar[str] = "bench"
    table: Optional[str] = None
    dataset: str = "cifar10"
    source: str = "csv"

    def __post_init__(self) -> None:
        if self.table is not None and not isinstance(self.table, str):
            raise SearchConfigError(f"bench.table: {show_value(self.table)} is not null or a path")
        if not isinstance(self.dataset, str) or not self.dataset:
            raise SearchConfigError(f"bench.dataset: {show_value(self.dataset)} is not a dataset name (e.g. cifar10, "
                                    "cifar100)")
        check_choice("bench.source", self.source, TABLE_SOURCES, error=SearchConfigError)


@dataclass(frozen=True)
class OutputConfig(_Section):
    """``install_dir``: also copy the winners into this user arch dir (and register it)."""

    PATH: ClassVar[str] = "output"
    install_dir: Optional[str] = None

    def __post_init__(self) -> None:
        if self.install_dir is not None and not isinstance(self.install_dir, str):
            raise SearchConfigError(f"output.install_dir: {show_value(self.install_dir)} is not null or a string")


_SECTIONS: Dict[str, type] = {"pool": PoolConfig, "predictor": PredictorConfig, "stage2": Stage2Config,
                              "stage3": Stage3Config, "family": FamilyConfig, "executor": ExecutorConfig,
                              "oracle": OracleConfig, "bench": BenchConfig, "output": OutputConfig}
# what decides the space; replacing one of them rebuilds it
_SPACE_FIELDS = ("space", "mode", "fixed_arch", "flops_convention", "bench")


@dataclass(frozen=True)
class SearchConfig:
    """A validated search config: one typed section per concern.

    ``space`` (the space section, validated by building the ``SearchSpace``) and ``fixed_arch``
    stay the mappings given. ``train`` is the ``train:`` section as given; its schema is the
    training package's ``TrainSettings`` (unknown keys are refused here; ``train_settings()``
    builds it, which a run does when it opens: a shipped config may leave ``data_dir`` to the
    command line). Build a config with ``from_mapping`` (or ``load_config``), which also builds
    the search space once: ``search_space`` hands that one object to whoever needs it.
    ``to_dict()`` is the mapping the run store keeps and digests (values as given, every
    default filled in)."""

    name: str = "search"
    seed: int = 0
    mode: str = "joint"
    flops_convention: str = "fvcore"
    space: Optional[Mapping[str, Any]] = None
    fixed_arch: Any = None
    pool: PoolConfig = field(default_factory=PoolConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    stage3: Stage3Config = field(default_factory=Stage3Config)
    family: FamilyConfig = field(default_factory=FamilyConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    train: Mapping[str, Any] = field(default_factory=dict)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or not all(ch.isalnum() or ch in "_-" for ch in self.name):
            raise SearchConfigError(f"name: {show_value(self.name)} is not a non-empty name of letters, digits, "
                                    "'_' or '-'")
        _seed("seed", self.seed)
        check_choice("mode", self.mode, MODES, error=SearchConfigError)
        check_choice("flops_convention", self.flops_convention, sorted(CONVENTIONS), error=SearchConfigError)
        if self.mode == "recipe_only" and self.fixed_arch is None:
            raise SearchConfigError("fixed_arch: None is required in mode 'recipe_only' (a zoo name, YAML path or "
                                    "arch mapping)")
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise SearchConfigError(f"{name}: {show_value(getattr(self, name))} is not a {cls.__name__}")
        object.__setattr__(self, "train", copy.deepcopy(dataclass_kwargs(TrainSettings, self.train, "train",
                                                                          SearchConfigError)))
        if self.pool.n < self.stage2.budget:
            raise SearchConfigError(f"pool.n: {self.pool.n!r} is below stage2.rounds x stage2.m = {self.stage2.budget} "
                                    "(candidates to train)")
        if self.space is None:
            raise SearchConfigError("space: None is missing: a search config needs a space")
        if not isinstance(self.space, Mapping):
            raise SearchConfigError(f"space: {show_value(self.space)} is not a mapping")
        object.__setattr__(self, "space", copy.deepcopy(dict(self.space)))
        object.__setattr__(self, "fixed_arch", copy.deepcopy(self.fixed_arch))
        object.__setattr__(self, "_search_space", None)

    @classmethod
    def from_mapping(cls, raw: Any) -> "SearchConfig":
        """Validated config from a raw mapping (missing keys take their defaults); builds the space once."""
        kwargs = dataclass_kwargs(cls, raw, "", SearchConfigError)
        for name, section in _SECTIONS.items():
            if name in kwargs:
                kwargs[name] = section.from_mapping(kwargs[name])
        cfg = cls(**kwargs)
        cfg.search_space  # the space validates itself (ranges, choices, ties, specs it can produce)
        return cfg

    def train_settings(self) -> TrainSettings:
        """The ``train:`` section as the training package's settings (strictly validated)."""
        try:
            return TrainSettings.from_dict(self.train)
        except TrainConfigError as e:
            text = str(e)
            raise SearchConfigError(text if text.startswith("train") else f"train: {text}") from None

    @property
    def search_space(self) -> Space:
        """The search space of this config (of kind ``space.kind``), built on first use and then shared."""
        if self._search_space is None:
            object.__setattr__(self, "_search_space", make_space(self))
        return self._search_space

    def replace(self, **changes: Any) -> "SearchConfig":
        """A copy with whole sections replaced; the built space is kept unless its inputs change."""
        new = dataclasses.replace(self, **changes)
        if not set(changes) & set(_SPACE_FIELDS):
            object.__setattr__(new, "_search_space", self._search_space)
        return new

    def to_dict(self) -> Dict[str, Any]:
        """The config as the run store keeps it: every key, in the schema's order, values as given."""
        out: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = _plain(copy.deepcopy(value))
        return out


def _defaults() -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(SearchConfig):
        if f.name in _SECTIONS:
            out[f.name] = _SECTIONS[f.name]().to_dict()
        elif f.name == "train":
            out[f.name] = {}  # TrainSettings' own defaults
        else:
            out[f.name] = f.default
    return out


# The schema as a mapping (derived from the dataclasses): a key present here is allowed.
DEFAULTS: Dict[str, Any] = _defaults()
# keys whose value is free-form (validated elsewhere): the space, train settings, fixed arch
_FREE = {"space", "train", "fixed_arch"}


def _fail(key: str, value: Any, allowed: str) -> SearchConfigError:
    return SearchConfigError(f"{key}: {value!r} {allowed}")


def parse_constraint(text: Union[str, Mapping[str, Any], float, int], path: str = "constraint"
                     ) -> Dict[str, float]:
    """A constraint from config or the command line.

    Mapping form: ``{flops: 450e6}``, ``{flops: 450e6, params: 9e6}`` (upper bounds).
    String form: ``flops<=450M``, ``450M`` (FLOPs), ``params<=9.5M``, ``flops<=450M&params<=9M``.
    Suffixes K, M, G scale by 1e3, 1e6, 1e9. Errors name ``path`` (e.g. ``stage3.constraints[0]``).
    """
    if isinstance(text, Mapping):
        unknown = [k for k in text if k not in CONSTRAINT_KEYS]
        if unknown:
            raise _fail(f"{path}.{unknown[0]}", text[unknown[0]], f"is not a known resource; allowed: {list(CONSTRAINT_KEYS)}")
        if not text:
            raise _fail(path, dict(text), f"is empty; give at least one of {list(CONSTRAINT_KEYS)}")
        out = {}
        for k, v in text.items():
            out[k] = cost_value(f"{path}.{k}", v)
        return out
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return {"flops": cost_value(f"{path}.flops", text)}
    if not isinstance(text, str):
        raise _fail(path, text, "is not a mapping, number or string like 'flops<=450M'")
    out = {}
    for part in text.replace(" ", "").split("&"):
        if "<=" in part:
            k, v = part.split("<=", 1)
        else:
            k, v = "flops", part
        if k not in CONSTRAINT_KEYS:
            raise _fail(path, text, f"names unknown resource {k!r}; allowed: {list(CONSTRAINT_KEYS)}")
        out[k] = cost_value(f"{path}.{k}", v)
    return out


COST_FORMS = "a number or a string like '450M' or '4.5e8' (suffixes K, M, G scale by 1e3, 1e6, 1e9)"


def cost_value(key: str, v: Any, positive: bool = True) -> float:
    """A FLOPs / params count from config or the command line, in one of ``COST_FORMS``:
    > 0 (``positive``, a constraint) or >= 0 (a pool bound). Errors name ``key``."""
    if isinstance(v, str):
        s = v.strip().upper()
        mult = {"K": 1e3, "M": 1e6, "G": 1e9}.get(s[-1:], 1.0)
        if s[-1:] in ("K", "M", "G"):
            s = s[:-1]
        try:
            v = float(s) * mult
        except ValueError:
            raise _fail(key, v, f"is not {COST_FORMS}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _fail(key, v, f"is not {COST_FORMS}")
    if not math.isfinite(v) or (v <= 0 if positive else v < 0):
        raise _fail(key, v, "is not a positive number" if positive else "is not a number >= 0")
    return float(v)


def constraint_label(c: Mapping[str, float]) -> str:
    """'450m' for {flops: 450e6}; '450m_9mp' with a params bound."""
    parts = []
    if "flops" in c:
        parts.append(f"{c['flops'] / 1e6:g}m")
    if "params" in c:
        parts.append(f"{c['params'] / 1e6:g}mp")
    return "_".join(parts).replace(".", "p")


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
        raise SearchConfigError(f"{p}: not valid YAML ({' '.join(str(e).split())})") from None
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


def build_config(raw: Mapping[str, Any]) -> SearchConfig:
    """Validated config (defaults filled in) from a raw mapping: ``SearchConfig.from_mapping``."""
    if not isinstance(raw, Mapping):
        raise _fail("config", raw, "is not a mapping")
    return SearchConfig.from_mapping(raw)


def load_config(path: Optional[str] = None, overrides: Sequence[str] = (),
                constraints: Optional[Sequence[str]] = None, base: Optional[Mapping[str, Any]] = None
                ) -> SearchConfig:
    """Load ``path`` (None: the embedded default; a shipped name like 'cifar10' works too),
    apply dotted ``overrides`` and optional command-line ``constraints``; validate.
    ``base``: start from this config mapping instead of a file (a resumed run's stored config)."""
    raw = apply_overrides(read_raw(path) if base is None else dict(base), overrides)
    if constraints is not None:
        raw.setdefault("stage3", {})
        raw["stage3"]["constraints"] = list(constraints)
    return build_config(raw)


def config_digest(cfg: Union[SearchConfig, Mapping[str, Any]], sections: Optional[Sequence[str]] = None) -> str:
    """Digest of what a resumed run must keep: every section that decides what is trained
    (pool, predictor, stage 2, train, space, seed, ...). Placement (executor) and the stage-3
    sections are left out; ``sections`` digests just those sections instead. ``cfg``: a
    SearchConfig or its stored mapping (``to_dict()``), which digest alike."""
    if isinstance(cfg, SearchConfig):
        cfg = cfg.to_dict()
    if sections is None:
        d = {k: v for k, v in cfg.items() if k not in PLACEMENT_SECTIONS + STAGE3_SECTIONS}
    else:
        d = {k: cfg.get(k) for k in sections}
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def with_defaults(stored: Mapping[str, Any]) -> Dict[str, Any]:
    """A stored config with every key the schema has gained since the run started filled in
    with its default (a new key's default keeps what runs did before it existed), so that an
    older run dir compares equal to today's config and resumes."""

    def fill(node: Mapping[str, Any], schema: Mapping[str, Any], prefix: str) -> Dict[str, Any]:
        out = dict(node)
        for k, default in schema.items():
            if k not in out:
                out[k] = copy.deepcopy(default)
            elif isinstance(default, dict) and default and f"{prefix}{k}" not in _FREE and isinstance(out[k], Mapping):
                out[k] = fill(out[k], default, f"{prefix}{k}.")
        return out

    return fill(stored, DEFAULTS, "")


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
