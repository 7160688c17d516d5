"""VICReg (Bardes et al. 2022): invariance between the views, plus a variance term that keeps
every embedding dimension alive and a covariance term that decorrelates them."""

from lightly.loss import VICRegLoss
from lightly.models.modules import BarlowTwinsProjectionHead

from medssl.training.methods import register
from medssl.training.methods.base import SSLMethod


@register
class VICReg(SSLMethod):
    name = "vicreg"
    # The recipe's source: the paper or benchmark, and what medssl changed and why
    source = (
        "Bardes et al. 2022 (loss weights 25, 25, 1; lightly's example head); the study's Adam")
    guard_hint = "a larger variance_weight (--method-opt variance_weight=25, its default)"
    # The loss's three weights as published (lambda, mu, nu): the variance term is what keeps
    # the embeddings apart; without it a constant embedding is a minimum (it collapses).
    defaults = {"projection_dim": 2048, "invariance_weight": 25.0, "variance_weight": 25.0,
                "covariance_weight": 1.0}

    def build(self, feature_dim, projection_dim=2048, invariance_weight=25.0,
              variance_weight=25.0, covariance_weight=1.0):
        # lightly's VICReg example uses the Barlow Twins head: the paper's 3-layer expander.
        self.projection_head = BarlowTwinsProjectionHead(feature_dim, projection_dim, projection_dim)
        self.criterion = VICRegLoss(lambda_param=invariance_weight, mu_param=variance_weight,
                                    nu_param=covariance_weight, gather_distributed=True)

    def loss(self, views, labels):
        z0, z1 = (self.projection_head(self.encode(v)) for v in views)
        return self.criterion(z0, z1)
