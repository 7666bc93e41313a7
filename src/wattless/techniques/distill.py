"""Knowledge distillation: the baseline (or any model) as teacher. Logit distillation with temperature
(Hinton et al. 2015) for classifiers; for encoders, embedding cosine and optional hidden-state matching.

Through the same door as every technique: ``apply_(model, DistillConfig(), context)`` (the teacher is
``context.teacher``) returns a Distillation handle whose losses replace the task loss; the model itself is
not changed, and converting it leaves the student as it is (the teacher is not deployed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from wattless.techniques.base import ApplyContext, Technique, TechniqueConfig, register

__all__ = ["DistillConfig", "Distillation", "logit_distillation", "embedding_distillation", "relation_distillation",
           "hidden_distillation"]


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


class Distillation(Technique):
    """The live handle: the teacher's outputs, and the loss that takes the task loss's place."""

    name = "distill"

    def __init__(self, config: DistillConfig, teacher: nn.Module) -> None:
        self.config, self.teacher = config, teacher.eval()

    @property
    def hidden(self) -> bool:
        """Whether hidden states are matched (the forwards then return them)."""
        return self.config.hidden_weight > 0

    def classifier_loss(self, logits: torch.Tensor, task: torch.Tensor, inputs: Any) -> torch.Tensor:
        """alpha * KL(teacher || student) on softened logits + (1 - alpha) * the task loss."""
        with torch.no_grad():
            t_logits = self.teacher(**inputs) if isinstance(inputs, dict) else self.teacher(inputs)
        c = self.config
        return c.alpha * logit_distillation(logits, t_logits, c.temperature) + (1 - c.alpha) * task

    def encoder_loss(self, model: nn.Module, inputs: dict[str, Any],
                     pool: Callable[[Any, Any], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, the student's pooled embeddings): embedding cosine, plus relation and hidden-state terms."""
        raw = model(**inputs, output_hidden_states=self.hidden)
        with torch.no_grad():
            t_raw = self.teacher(**inputs, output_hidden_states=self.hidden)
        out, t_out = pool(raw, inputs), pool(t_raw, inputs)
        loss = embedding_distillation(out, t_out)
        if self.config.relation_weight:
            loss = loss + self.config.relation_weight * relation_distillation(out, t_out)
        if self.hidden:
            loss = loss + self.config.hidden_weight * hidden_distillation(raw.hidden_states, t_raw.hidden_states)
        return loss, out


@register(DistillConfig)
def _apply_distillation(model: nn.Module, config: DistillConfig, context: ApplyContext) -> Distillation:
    if context.teacher is None:
        raise ValueError("distillation needs a teacher: set context.teacher (the baseline, or the model "
                         "DistillConfig.teacher names)")
    return Distillation(config, context.teacher)


@register(DistillConfig, step="convert")
def _convert_distillation(model: nn.Module, config: DistillConfig | None) -> None:
    """Nothing to do: the student is the deployed model; the teacher stays behind."""
