"""Knowledge distillation: the baseline (or any model) as teacher. Logit distillation with temperature
(Hinton et al. 2015) for classifiers; for encoders, embedding cosine and optional hidden-state matching."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from wattless.techniques.base import TechniqueConfig

__all__ = ["DistillConfig", "logit_distillation", "embedding_distillation"]


class DistillConfig(TechniqueConfig):
    kind: ClassVar[str] = "distill"
    teacher: str = Field("baseline", description='"baseline" or a model spec path/to/file.py:factory')
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the distillation loss; 1 - alpha on the task loss")
    hidden_weight: float = Field(0.0, ge=0, description="weight of hidden-state matching (MSE)")
    relation_weight: float = Field(
        0.0, ge=0, description="encoders: weight of matching the in-batch cosine-similarity matrix (neighbour order)")


def logit_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened logits, scaled by T^2 so gradients keep their size."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                    reduction="batchmean") * t * t


def embedding_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine between student and teacher embeddings (B, D)."""
    return 1 - F.cosine_similarity(student, teacher, dim=-1).mean()


def relation_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE between the (B, B) cosine-similarity matrices of student and teacher embeddings: keeps which
    sentence is nearest to which, what nearest-neighbour agreement measures."""
    s, t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
    return F.mse_loss(s @ s.T, t @ t.T)


def hidden_distillation(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean squared error between matching hidden states, normalised by the teacher's scale."""
    losses = [F.mse_loss(s, t) / t.pow(2).mean().clamp_min(1e-8) for s, t in zip(student, teacher)]
    return torch.stack(losses).mean()
