"""VICReg (Bardes et al. 2022): invariance between the views, plus a variance term that keeps
every embedding dimension alive and a covariance term that decorrelates them."""

from lightly.loss import VICRegLoss
from lightly.models.modules import BarlowTwinsProjectionHead

from medssl.training.methods import register
from medssl.training.methods.base import SSLMethod


@register
class VICReg(SSLMethod):
    name = "vicreg"
    defaults = {"projection_dim": 2048}

    def build(self, feature_dim, projection_dim=2048):
        # lightly's VICReg example uses the Barlow Twins head: the paper's 3-layer expander.
        self.projection_head = BarlowTwinsProjectionHead(feature_dim, projection_dim, projection_dim)
        self.criterion = VICRegLoss(gather_distributed=True)

    def loss(self, views, labels):
        z0, z1 = (self.projection_head(self.encode(v)) for v in views)
        return self.criterion(z0, z1)
