"""MoCo v2 (Chen et al. 2020): a query encoder learns to pick its key, made by a momentum copy of
itself, among 4096 keys of earlier batches held in a queue (lightly's memory bank, a buffer, so
checkpoints keep it and resume is exact); at most half the train images on a small dataset."""

from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead

from medssl.training.methods import register
from medssl.training.methods.base import SSLMethod


@register
class MoCo(SSLMethod):
    name = "moco"
    # The recipe's source: the paper or benchmark, and what medssl changed and why
    source = (
        "MoCo v2, Chen et al. 2020 (temperature 0.2; key momentum 0.99 rising to 1, as lightly's "
        "benchmarks; 4096 keys, fitted to at most half the train images); the study's Adam")
    guard_hint = "a larger temperature (--method-opt temperature=0.3)"
    defaults = {"temperature": 0.2, "queue_size": 4096, "momentum": 0.99, "projection_dim": 128}

    @staticmethod
    def fit_to_data(settings, train_images, batch_size, image_size):
        # MoCo's 4096 keys are 0.3% of ImageNet. On a small dataset a queue near its size holds
        # keys of the very images being queried, from earlier steps, as negatives (on the digits
        # set, 4096 keys of 1221 images made the backbone worse than its random init). A queue of
        # at most half the images, in whole batches (lightly's bank drops a batch's overflow),
        # holds few of them.
        fitting = max(batch_size, (train_images // 2) // batch_size * batch_size)
        return {**settings, "queue_size": min(settings["queue_size"], fitting)}

    def build(self, feature_dim, temperature=0.2, queue_size=4096, momentum=0.99,
              projection_dim=128):
        self.projection_head = MoCoProjectionHead(feature_dim, feature_dim, projection_dim)
        self.backbone_momentum = self.momentum_copy(self.backbone)
        self.projection_head_momentum = self.momentum_copy(self.projection_head)
        self.momentum = momentum
        self.criterion = NTXentLoss(temperature=temperature,
                                    memory_bank_size=(queue_size, projection_dim))

    def loss(self, views, labels):
        query = self.projection_head(self.encode(views[0]))
        key = self.projection_head_momentum(self.backbone_momentum(views[1])).detach()
        return self.criterion(query, key)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.follow([(self.backbone, self.backbone_momentum),
                     (self.projection_head, self.projection_head_momentum)], self.momentum)
