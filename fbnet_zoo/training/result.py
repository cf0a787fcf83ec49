"""What a training run returns: per-epoch held-out top-1, loss and wall time, or why it failed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


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
