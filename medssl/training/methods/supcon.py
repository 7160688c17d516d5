"""Supervised contrastive pretraining (Khosla et al. 2020), the study's other named next step:
SimCLR's loss, with every image of the same class a positive. It uses labels, so it is a
supervised prior: it sees only the labelled train images (at a label fraction, only that
fraction's labels), and the report says so.

lightly 1.6 has no SupCon loss; this is the paper's L_out over the two views, in a few lines."""

import torch
from lightly.models.modules import SimCLRProjectionHead
from torch import nn

from medssl.training.methods import register
from medssl.training.methods.base import SSLMethod


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over anchors of -log(sum over positives of exp(sim) / sum over all others of
    exp(sim)) / #positives: Khosla et al.'s L_out. `z`: n x d (all views stacked), `labels`: n."""
    z = nn.functional.normalize(z, dim=1)
    sim = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    positives = (labels.view(-1, 1) == labels.view(1, -1)) & ~self_mask
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    per_anchor = -(log_prob.masked_fill(~positives, 0).sum(1)) / positives.sum(1).clamp_min(1)
    return per_anchor.mean()


@register
class SupCon(SSLMethod):
    name = "supcon"
    # The recipe's source: the paper or benchmark, and what medssl changed and why
    source = (
        "Khosla et al. 2020 (temperature 0.1, SimCLR's head); the study's Adam")
    guard_hint = "a larger temperature (--method-opt temperature=0.2)"
    uses_labels = True
    defaults = {"temperature": 0.1, "projection_dim": 128}

    def build(self, feature_dim, temperature=0.1, projection_dim=128):
        self.projection_head = SimCLRProjectionHead(feature_dim, feature_dim, projection_dim)
        self.temperature = temperature

    def loss(self, views, labels):
        z = torch.cat([self.projection_head(self.encode(v)) for v in views])
        return supcon_loss(z, labels.repeat(len(views)), self.temperature)
