"""Losses: label-smoothed soft targets, mixup, soft cross-entropy and knowledge distillation."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot targets with label smoothing: 1 - s + s/K on the label, s/K elsewhere."""
    t = torch.full((labels.shape[0], num_classes), smoothing / num_classes, device=labels.device)
    t.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + smoothing / num_classes)
    return t


def mixup(x: torch.Tensor, targets: torch.Tensor, alpha: float) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """Mix each sample with a random other one of the batch: lam ~ Beta(alpha, alpha) per batch,
    ``x' = lam x + (1 - lam) x[perm]`` and the same for the soft targets. Uses torch's global RNG."""
    if alpha <= 0 or x.shape[0] < 2:
        return x, targets, 1.0
    a = torch.tensor(float(alpha))
    lam = float(torch.distributions.Beta(a, a).sample())
    perm = torch.randperm(x.shape[0]).to(x.device)
    return lam * x + (1.0 - lam) * x[perm], lam * targets + (1.0 - lam) * targets[perm], lam


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened outputs, times T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student.float() / t, dim=-1), F.log_softmax(teacher.float() / t, dim=-1),
                    reduction="batchmean", log_target=True) * (t * t)


def distillation_mix(student: torch.Tensor, teacher: torch.Tensor, ce: torch.Tensor, kd_weight: float,
                     temperature: float = 1.0) -> torch.Tensor:
    """The distillation objective: ``kd_weight * KD + (1 - kd_weight) * CE`` (the paper's final
    training: 0.8 KD + 0.2 CE), KD being ``distillation_loss`` and ``ce`` the label loss."""
    return kd_weight * distillation_loss(student, teacher, temperature) + (1.0 - kd_weight) * ce
