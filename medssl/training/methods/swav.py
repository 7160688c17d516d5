"""SwAV (Caron et al. 2020), the study's named next step: views are assigned to learned prototypes
by Sinkhorn-Knopp, and each view predicts the assignment of the others; multi-crop adds small
local views that must predict the global ones'. Without a queue, as lightly's example (a queue
helps batches far below 256)."""

import torch
from lightly.loss import SwaVLoss
from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

from medssl.training.methods import register
from medssl.training.methods.base import SSLMethod, fit_local_views, multi_crop


@register
class SwAV(SSLMethod):
    name = "swav"
    # The recipe's source: the paper or benchmark, and what medssl changed and why
    source = (
        "Caron et al. 2020 (temperature 0.1, 512 prototypes and no queue as lightly's example, 2 "
        "+ 6 crops, two views alone below 74 px); the study's Adam: its small-batch LARS "
        "collapsed here (docs/methods.md)")
    guard_hint = "a larger temperature (--method-opt temperature=0.2) or fewer prototypes"
    defaults = {"prototypes": 512, "projection_dim": 128, "local_views": 6, "temperature": 0.1,
                "freeze_prototypes_steps": 0}

    def build(self, feature_dim, prototypes=512, projection_dim=128, local_views=6,
              temperature=0.1, freeze_prototypes_steps=0):
        self.projection_head = SwaVProjectionHead(feature_dim, feature_dim, projection_dim)
        self.prototypes = SwaVPrototypes(projection_dim, prototypes, freeze_prototypes_steps)
        self.criterion = SwaVLoss(temperature=temperature, sinkhorn_gather_distributed=True)

    @staticmethod
    def fit_to_data(settings, train_images, batch_size, image_size):
        return fit_local_views(settings, image_size)

    @staticmethod
    def views(image_size, colour, local_views=6, **settings):
        return multi_crop(image_size, colour, local_views=local_views, local_scale=0.14)

    def loss(self, views, labels):
        self.prototypes.normalize()
        outputs = []
        for v in views:
            z = torch.nn.functional.normalize(self.projection_head(self.encode(v)), dim=1)
            outputs.append(self.prototypes(z, self.global_step))
        return self.criterion(outputs[:2], outputs[2:])
