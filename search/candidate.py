"""What the search hands to training and what comes back: the contract between the
search logic (stages, store) and candidate training (trainer, executors)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

from fbnet_zoo.spec import ArchSpec
from fbnet_zoo.training.recipe import Recipe
from fbnet_zoo.training.result import TrainResult  # noqa: F401  (part of the contract)


@dataclass(frozen=True)
class Candidate:
    """One (architecture, recipe) pair to train. ``key`` is stable across runs (the store's id)."""

    key: str
    arch: ArchSpec
    recipe: Recipe

    def to_dict(self) -> Dict[str, Any]:
        return {"key": self.key, "arch": self.arch.to_dict(), "recipe": self.recipe.to_dict()}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Candidate":
        return cls(data["key"], ArchSpec.from_dict(data["arch"]), Recipe.from_dict(data["recipe"]))
