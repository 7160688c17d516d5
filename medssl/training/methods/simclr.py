"""SimCLR (Chen et al. 2020): two views of each image go through the backbone and a projection
head; NT-Xent pulls the two views of an image together and pushes every other image in the
(globally gathered) batch away. The study's method."""

from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead

from medssl.training.methods import register
from medssl.training.methods.base import SSLMethod


@register
class SimCLR(SSLMethod):
    name = "simclr"
    guard_hint = "a larger temperature (--method-opt temperature=0.2)"
    defaults = {"temperature": 0.1, "projection_dim": 128}

    def build(self, feature_dim, temperature=0.1, projection_dim=128):
        self.projection_head = SimCLRProjectionHead(feature_dim, feature_dim, projection_dim)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)

    def forward(self, x):
        return self.projection_head(self.encode(x))

    def loss(self, views, labels):
        return self.criterion(self(views[0]), self(views[1]))
