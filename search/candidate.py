"""What the search hands to training and what comes back: the contract between the
search logic (stages, store) and candidate training (trainer, executors)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Union

from fbnet_zoo.spec import ArchSpec
from fbnet_zoo.training.recipe import Recipe
from fbnet_zoo.training.result import TrainResult  # noqa: F401  (part of the contract)


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
