"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of the two views' embeddings is
pushed to the identity: invariant features, decorrelated from one another."""

from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead

from medssl.training.methods import register
from medssl.training.methods.base import SSLMethod


@register
class BarlowTwins(SSLMethod):
    name = "barlowtwins"
    # The recipe's source: the paper or benchmark, and what medssl changed and why
    source = (
        "Zbontar et al. 2021 (lambda 0.005; the 2048-wide projector of lightly's CIFAR-10 "
        "benchmark); the study's Adam")
    guard_hint = "a smaller lambda_param (--method-opt lambda_param=0.002)"
    defaults = {"projection_dim": 2048, "lambda_param": 5e-3}

    def build(self, feature_dim, projection_dim=2048, lambda_param=5e-3):
        self.projection_head = BarlowTwinsProjectionHead(feature_dim, projection_dim, projection_dim)
        self.criterion = BarlowTwinsLoss(lambda_param=lambda_param, gather_distributed=True)

    def loss(self, views, labels):
        z0, z1 = (self.projection_head(self.encode(v)) for v in views)
        return self.criterion(z0, z1)
