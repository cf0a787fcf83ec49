"""What the search hands to training and what comes back: the contract between the
search logic (stages, store) and candidate training (trainer, executors)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

from fbnet_zoo.spec import ArchSpec

from .recipe import Recipe


@dataclass(frozen=True)
class Candidate:
    """One candidate to train (or look up). ``key`` is stable across runs (the store's id).

    ``arch`` is the space's architecture: an ``ArchSpec`` (FBNet space, trained with
    ``recipe``) or the benchmark's cell string (NAS-Bench-201; no recipe: the benchmark's
    schedule is fixed)."""

    key: str
    arch: Union[ArchSpec, str]
    recipe: Optional[Recipe] = None

    def to_dict(self) -> Dict[str, Any]:
        arch = self.arch if isinstance(self.arch, str) else self.arch.to_dict()
        return {"key": self.key, "arch": arch, "recipe": None if self.recipe is None else self.recipe.to_dict()}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Candidate":
        arch = data["arch"]
        recipe = data.get("recipe")
        return cls(data["key"], ArchSpec.from_dict(arch) if isinstance(arch, Mapping) else arch,
                   None if recipe is None else Recipe.from_dict(recipe))


@dataclass
class TrainResult:
    """Outcome of training one candidate.

    status: "ok" or "failed" (diverged, raised, ...; ``error`` says why).
    top1[e], loss[e], epoch_seconds[e]: held-out top-1 (%), training loss and wall time of
    epoch e (0-based). ``final_top1`` is top1[-1] when status is "ok".
    """

    key: str
    status: str
    top1: List[float] = field(default_factory=list)
    loss: List[float] = field(default_factory=list)
    epoch_seconds: List[float] = field(default_factory=list)
    error: Optional[str] = None
    epochs_planned: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def final_top1(self) -> Optional[float]:
        return self.top1[-1] if (self.ok and self.top1) else None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainResult":
        return cls(**data)
