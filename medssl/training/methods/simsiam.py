"""SimSiam (Chen & He 2021): BYOL without the momentum copy; a stop-gradient alone keeps the two
branches from collapsing."""

from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

from medssl.training.methods import register
from medssl.training.methods.base import SSLMethod


@register
class SimSiam(SSLMethod):
    name = "simsiam"
    # The recipe's source: the paper or benchmark, and what medssl changed and why
    source = (
        "Chen & He 2021, its own optimiser (SGD at 0.05 per 256 images, weight decay 1e-4) and "
        "2048-512 heads: with the study's Adam it fell far below its random init "
        "(docs/methods.md)")
    guard_hint = "its authors' optimiser (leave --optimizer unset: SGD)"
    defaults = {"projection_dim": 2048, "prediction_dim": 512}
    # The paper's optimiser (SGD, 0.05 per 256 images, weight decay 1e-4). On the digits set the
    # study's Adam at 1e-3 took SimSiam from kNN 0.944 to 0.806, this to 0.926 (docs/methods.md).
    recipe = {"optimizer": "sgd", "lr_per_256": 0.05, "weight_decay": 1e-4}

    def build(self, feature_dim, projection_dim=2048, prediction_dim=512):
        self.projection_head = SimSiamProjectionHead(feature_dim, projection_dim, projection_dim)
        self.prediction_head = SimSiamPredictionHead(projection_dim, prediction_dim, projection_dim)
        self.criterion = NegativeCosineSimilarity()

    def loss(self, views, labels):
        z0, z1 = (self.projection_head(self.encode(v)) for v in views)
        p0, p1 = self.prediction_head(z0), self.prediction_head(z1)
        return 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach()))
