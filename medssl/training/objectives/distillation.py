"""Knowledge distillation (Hinton et al. 2015): cross-entropy on the labels plus the KL divergence
from the teachers' temperature-softened predictions on the same augmented batch, scaled by T² so
that its gradients keep their size whatever the temperature:

    loss = (1 - alpha) * CE(student, labels) + alpha * T² * KL(p_teacher^T || p_student^T)

A teacher of several runs averages its members' softened probabilities. Teachers are frozen, in
eval mode, and kept out of the module tree: they are finished runs, loaded again from their own
folders, never written into the student's checkpoints.
"""

import torch
import torch.nn.functional as F
from torch import nn

from medssl.training.objectives import register
from medssl.training.objectives.plain import Plain
from medssl.training.teachers import load_teacher

TEMPERATURE = 4.0  # Hinton et al.'s range is 1-20; 4 is the usual choice for image classifiers
ALPHA = 0.9


def kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor,
            temperature: float = TEMPERATURE, alpha: float = ALPHA,
            class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """`teacher_probs`: the teachers' mean softmax at `temperature`."""
    hard = Plain()(student_logits, labels, None, class_weights)
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    soft = F.kl_div(log_student, teacher_probs.float(), reduction="batchmean")
    return (1 - alpha) * hard + alpha * temperature ** 2 * soft


@register
class Distillation(nn.Module):
    name = "distillation"
    selected_by = "teachers"  # --teacher: finished runs on the student's split

    @classmethod
    def for_run(cls, cfg, table):
        """The teachers loaded from their run folders (checked against the student's split),
        and what metrics.json records of them."""
        loaded = [load_teacher(run, table.samples, table.classes, cfg.dataset, cfg.image_size)
                  for run in cfg.teachers]
        return (cls([t for t, _ in loaded], cfg.kd_temperature, cfg.kd_alpha),
                {"name": cls.name, "temperature": cfg.kd_temperature, "alpha": cfg.kd_alpha,
                 "student": cfg.model, "teachers": [info for _, info in loaded]})

    def __init__(self, teachers: list[nn.Module], temperature: float = TEMPERATURE,
                 alpha: float = ALPHA):
        super().__init__()
        if not teachers:
            raise ValueError("distillation needs at least one teacher")
        for teacher in teachers:
            teacher.eval()
            teacher.requires_grad_(False)
        self.__dict__["teachers"] = list(teachers)  # out of the state dict, see the docstring
        self.temperature, self.alpha = temperature, alpha

    @torch.no_grad()
    def teacher_probs(self, inputs: torch.Tensor) -> torch.Tensor:
        for teacher in self.teachers:  # outside the module tree, so Lightning does not move them
            teacher.to(inputs.device)
        probs = [F.softmax(t(inputs).float() / self.temperature, dim=1) for t in self.teachers]
        return torch.stack(probs).mean(dim=0)

    def forward(self, logits, labels, inputs, class_weights=None):
        return kd_loss(logits, self.teacher_probs(inputs), labels, self.temperature, self.alpha,
                       class_weights)
