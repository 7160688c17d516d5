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
    # The recipe's source: the paper or benchmark, and what medssl changed and why
    source = (
        "Chen et al. 2020 (NT-Xent at temperature 0.1, lightly's 2048-2048-128 head), trained "
        "with the study's Adam (1e-3, weight decay 1e-6, 10 warm-up epochs), as the study did")
    guard_hint = "a larger temperature (--method-opt temperature=0.2)"
    defaults = {"temperature": 0.1, "projection_dim": 128}

    def build(self, feature_dim, temperature=0.1, projection_dim=128):
        self.projection_head = SimCLRProjectionHead(feature_dim, feature_dim, projection_dim)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)

    def forward(self, x):
        return self.projection_head(self.encode(x))

    def loss(self, views, labels):
        return self.criterion(self(views[0]), self(views[1]))
