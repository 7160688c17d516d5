"""DINO (Caron et al. 2021): a student matches a momentum teacher's centred, sharpened output
over prototypes; the teacher sees only the global crops, the student every crop. Asymmetric
blur and solarize on the two global views, as published."""

from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead

from medssl.training.methods import register
from medssl.training.methods.base import SSLMethod, fit_local_views, multi_crop


@register
class DINO(SSLMethod):
    name = "dino"
    # The recipe's source: the paper or benchmark, and what medssl changed and why
    source = (
        "Caron et al. 2021 (2048 outputs, teacher momentum 0.996 rising to 1, multi-crop as "
        "SwAV's); the study's Adam: its authors' ResNet SGD did worse here (docs/methods.md)")
    embedding_head = "student_head"
    guard_hint = "a slower teacher (--method-opt momentum=0.998)"
    defaults = {"output_dim": 2048, "momentum": 0.996, "local_views": 6, "warmup_teacher_temp_epochs": 0}

    def build(self, feature_dim, output_dim=2048, momentum=0.996, local_views=6,
              warmup_teacher_temp_epochs=0):
        self.student_head = DINOProjectionHead(feature_dim, 512, 64, output_dim,
                                               freeze_last_layer=1)
        self.teacher_backbone = self.momentum_copy(self.backbone)
        # Built anew, not copied: the head's weight normalisation cannot be deep-copied.
        self.teacher_head = DINOProjectionHead(feature_dim, 512, 64, output_dim)
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        self.teacher_head.requires_grad_(False)
        self.momentum = momentum
        # The centre is a buffer of the loss: checkpoints keep it, so resume is exact.
        self.criterion = DINOLoss(output_dim=output_dim,
                                  warmup_teacher_temp_epochs=warmup_teacher_temp_epochs)

    @staticmethod
    def fit_to_data(settings, train_images, batch_size, image_size):
        return fit_local_views(settings, image_size)

    @staticmethod
    def views(image_size, colour, local_views=6, **settings):
        return multi_crop(image_size, colour, local_views=local_views, local_scale=0.25,
                          first={"gaussian_blur": 1.0, "solarize": 0.0},
                          second={"gaussian_blur": 0.1, "solarize": 0.2},
                          local={"gaussian_blur": 0.5, "solarize": 0.0})

    def loss(self, views, labels):
        teacher = [self.teacher_head(self.teacher_backbone(v)).detach() for v in views[:2]]
        student = [self.student_head(self.encode(v)) for v in views]
        return self.criterion(teacher, student, epoch=self.current_epoch)

    def on_after_backward(self):
        # The last layer stays frozen during the first epoch, as the paper does.
        self.student_head.cancel_last_layer_gradients(current_epoch=self.current_epoch)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.follow([(self.backbone, self.teacher_backbone), (self.student_head, self.teacher_head)],
                    self.momentum)
