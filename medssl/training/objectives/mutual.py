"""Deep mutual learning (Zhang et al. 2018): a cohort of networks trained together, each on
cross-entropy plus the mean KL divergence from every other member's predictions to its own:

    loss_k = CE(p_k, labels) + 1/(K-1) * sum_{j != k} KL(p_j || p_k)

The peers' predictions are detached, as in the paper: each member learns from the others and
is updated by its own optimiser only. Temperature 1, as the paper uses.

The cohort module (one network per member) calls this objective once per member per batch,
with the other members' logits on the same augmented batch.
"""

import torch
import torch.nn.functional as F
from torch import nn

from medssl.training.objectives import register
from medssl.training.objectives.plain import Plain


def dml_loss(logits: torch.Tensor, peer_logits: list[torch.Tensor], labels: torch.Tensor,
             class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """One member's loss; `peer_logits`: the other members' logits (detached here)."""
    if not peer_logits:
        raise ValueError("deep mutual learning needs at least one peer (a cohort of two or more)")
    hard = Plain()(logits, labels, None, class_weights)
    log_own = F.log_softmax(logits.float(), dim=1)
    mimicry = sum(F.kl_div(log_own, F.softmax(p.detach().float(), dim=1), reduction="batchmean")
                  for p in peer_logits) / len(peer_logits)
    return hard + mimicry


@register
class Mutual(nn.Module):
    name = "mutual"
    selected_by = "mutual"  # --mutual: the cohort's members

    @classmethod
    def for_run(cls, cfg, table):
        return cls(), {"name": cls.name, "members": list(cfg.mutual)}

    def forward(self, logits, labels, inputs, class_weights=None, peer_logits=()):
        return dml_loss(logits, list(peer_logits), labels, class_weights)
