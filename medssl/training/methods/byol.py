"""BYOL (Grill et al. 2020): an online network predicts the projection a momentum copy of itself
makes of the other view; no negatives. Asymmetric views as published: the first always blurred,
the second rarely blurred and sometimes solarized."""

from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

from medssl.training.methods import register
from medssl.training.methods.base import SSLMethod, two_views


@register
class BYOL(SSLMethod):
    name = "byol"
    # The recipe's source: the paper or benchmark, and what medssl changed and why
    source = (
        "Grill et al. 2020 (asymmetric blur and solarize, 4096-256 heads, momentum 0.99 rising to "
        "1 as lightly's benchmarks); the study's Adam (the paper's LARS at batch 4096 does not "
        "fit these batches)")
    guard_hint = "a slower target (--method-opt momentum=0.996)"
    defaults = {"momentum": 0.99, "hidden_dim": 4096, "projection_dim": 256}

    def build(self, feature_dim, momentum=0.99, hidden_dim=4096, projection_dim=256):
        self.projection_head = BYOLProjectionHead(feature_dim, hidden_dim, projection_dim)
        self.prediction_head = BYOLPredictionHead(projection_dim, hidden_dim, projection_dim)
        self.backbone_momentum = self.momentum_copy(self.backbone)
        self.projection_head_momentum = self.momentum_copy(self.projection_head)
        self.momentum = momentum
        self.criterion = NegativeCosineSimilarity()

    @staticmethod
    def views(image_size, colour, **settings):
        return two_views(image_size, colour, first={"gaussian_blur": 1.0, "solarize": 0.0},
                         second={"gaussian_blur": 0.1, "solarize": 0.2})

    def online(self, x):
        return self.prediction_head(self.projection_head(self.encode(x)))

    def target(self, x):
        return self.projection_head_momentum(self.backbone_momentum(x)).detach()

    def loss(self, views, labels):
        a, b = views
        return 0.5 * (self.criterion(self.online(a), self.target(b))
                      + self.criterion(self.online(b), self.target(a)))

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.follow([(self.backbone, self.backbone_momentum),
                     (self.projection_head, self.projection_head_momentum)], self.momentum)
