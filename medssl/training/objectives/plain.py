"""Plain cross-entropy, optionally weighted by class (`--class-weights`): the study's objective."""

import torch
import torch.nn.functional as F
from torch import nn

from medssl.training.objectives import register


@register
class Plain(nn.Module):
    name = "plain"
    selected_by = None  # the default: no option selects it

    @classmethod
    def for_run(cls, cfg, table):
        return cls(), {"name": cls.name}

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor,
                class_weights: torch.Tensor | None = None) -> torch.Tensor:
        if class_weights is None:
            return F.cross_entropy(logits, labels)
        return F.cross_entropy(logits, labels, weight=class_weights.to(logits.dtype))
