"""What every self-supervised method shares, so that a method's own file holds only its heads,
its views and its loss (solo-learn's split; lightly's parts).

The base owns: the backbone (channels-last, optionally compiled), the optimiser (Adam, SGD or LARS, no
weight decay on BatchNorm and biases on request) with the learning rate scaled to the global
batch, the linear warm-up and one cosine over the true number of steps, the per-batch colour
augmentation of each view on the accelerator (seeded by step, so a resumed run draws what an
uninterrupted one draws), the epoch's mean loss, and the checkpoint hooks that keep resume exact.

A method subclasses `SSLMethod` and sets:
- `name` (its registry name; its title is in the registry);
- `build(self, feature_dim, **settings)`: its heads, losses, momentum copies;
- `defaults`: its settings and their published values (recorded in backbone.json);
- `views(image_size, colour, **settings)`: the crops it trains on (size, scale, colour changes);
- `loss(self, views, labels)`: the loss of one batch of views;
- optionally `recipe`: its authors' optimiser, lr per 256 images and weight decay, used where the
  user set no optimiser, for a method the study's Adam trains badly (SimSiam).
Momentum methods update their copies in `on_train_batch_end`, from `self.global_step`, which a
checkpoint restores: the schedule resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch
from lightly.utils.lars import LARS
from lightly.utils.scheduler import cosine_warmup_schedule
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from medssl.data.sampling import shard, stream_seed
from medssl.options import HardwareOptions, SSLOptions
from medssl.training.distributed import scaled_lr
from medssl.training.run_logs import log_now


@dataclass
class View:
    """One crop of every image: its side in pixels, the range of its area as a share of the
    picture, and what its colour augmentation changes from the preset (for example BYOL's
    second view: less blur, some solarize)."""

    size: int
    scale: tuple[float, float]
    colour: dict = field(default_factory=dict)


def two_views(image_size: int, colour: dict, first: dict | None = None,
              second: dict | None = None) -> list[View]:
    """Two global crops with the preset's scale, as SimCLR, MoCo, SimSiam, Barlow Twins and VICReg
    use; `first`/`second` make them asymmetric (BYOL)."""
    scale = (colour["min_scale"], 1.0)
    return [View(image_size, scale, dict(first or {})), View(image_size, scale, dict(second or {}))]


# A ResNet's total stride: a crop smaller than this ends as one cell of its last feature map,
# computed mostly from padding.
BACKBONE_STRIDE = 32


def local_crop_size(image_size: int) -> int:
    """The multi-crop papers' small crop: 96 px of a 224-px view."""
    return max(8, round(image_size * 96 / 224))


def fit_local_views(settings: dict, image_size: int) -> dict:
    """No local crops where they would be smaller than the backbone's stride (global views under
    74 px: the demo's 64 px gives 27-px crops, the digits set's 32 px 14-px ones). Such a crop
    holds too little of the picture to say anything about the whole; lightly's and solo-learn's
    CIFAR-10 recipes (32 px) train SwAV and DINO on the two global views alone, and on the digits
    set six 14-px local crops took SwAV from few-shot 0.774 to 0.567 where two views alone took
    it to 0.896 (docs/methods.md)."""
    if local_crop_size(image_size) < BACKBONE_STRIDE:
        return {**settings, "local_views": 0}
    return settings


def multi_crop(image_size: int, colour: dict, local_views: int, local_scale: float,
               first: dict | None = None, second: dict | None = None,
               local: dict | None = None) -> list[View]:
    """SwAV's and DINO's multi-crop: two global crops of at least `local_scale` of the picture,
    and `local_views` small crops (96/224 of the size) of at most `local_scale`, from half the
    preset's smallest crop up. A preset (or `--aug min_scale`) whose smallest crop is above
    `local_scale` raises the border between the two: global crops then keep its floor, local
    crops lie between half of it and it (a range, never an empty one)."""
    small = local_crop_size(image_size)
    border = max(local_scale, colour["min_scale"])
    smallest = min(max(0.01, colour["min_scale"] / 2), border)
    glob = [View(image_size, (border, 1.0), dict(first or {})),
            View(image_size, (border, 1.0), dict(second or {}))]
    return glob + [View(small, (smallest, border), dict(local or {}))
                   for _ in range(local_views)]


def spread(x: torch.Tensor) -> torch.Tensor:
    """How far apart a batch's rows are: the std across the batch of the L2-normalised rows,
    averaged over the dimensions (SimSiam's collapse measure). 0 when every row points the same
    way, or is 0; a random ResNet on real pictures, and every pretrained one measured, lies far
    above training.guards.COLLAPSE_SPREAD."""
    return F.normalize(x.detach().float().flatten(1), dim=1).std(dim=0).mean()


def augment_seed(seed: int, step: int) -> int:
    """The seed of one step's colour augmentation: from (seed, step), so a resumed run draws what
    an uninterrupted one would; and from the rank under DDP, so that each process draws its own
    parameters for its own images instead of every rank repeating rank 0's. (A single process
    keeps the (seed, step) stream it always had: published single-process results stand.)"""
    rank, world = shard()
    return stream_seed(seed, step) if world == 1 else stream_seed(seed, step, rank)


# A module built without a recipe (tests, benchmarks): the study's Adam.
STUDY_RECIPE = SSLOptions(lr=1e-3, weight_decay=1e-6, warmup_epochs=10, optimizer="adam")


class SSLMethod(pl.LightningModule):
    name = ""
    uses_labels = False  # supervised pretraining (supcon): the labelled train images only
    # The optimiser the method's authors publish, {"optimizer", "lr_per_256", "weight_decay"}:
    # empty for a method that trains with the study's Adam (`pretrain.optimiser_recipe`).
    recipe: dict = {}
    # Besides a lower lr, the setting to change when the method diverges or collapses
    # (training.guards names it).
    guard_hint: str = ""
    # Where its defaults come from (the paper or benchmark) and what medssl changed and why,
    # recorded in backbone.json as `method_source`.
    source: str = ""
    embedding_head = "projection_head"  # the head whose output the loss compares

    def __init__(self, backbone: nn.Module, feature_dim: int, recipe: SSLOptions | None = None,
                 hardware: HardwareOptions | None = None, seed: int = 0,
                 batch_transform: nn.Module | None = None, **settings):
        """`recipe`: the run's pretraining part, resolved (None: the study's Adam, lr 1e-3,
        10 warm-up epochs); `hardware`: compiling and how the lr scales with processes;
        `settings`: the method's own (its `defaults`, fitted)."""
        super().__init__()
        recipe, hardware = recipe or STUDY_RECIPE, hardware or HardwareOptions()
        # The values the module reads back, as plain hyperparameters: a checkpoint holds no
        # option objects (checkpoints load with weights_only=True).
        self.save_hyperparameters({
            "feature_dim": feature_dim, "lr": recipe.lr, "weight_decay": recipe.weight_decay,
            "warmup_epochs": recipe.warmup_epochs, "optimizer": recipe.optimizer,
            "exclude_bn_bias": recipe.exclude_bn_bias, "compile_model": hardware.compile,
            "seed": seed, "lr_scaling": hardware.lr_scaling, **settings})
        compile_model = hardware.compile
        # channels-last is the layout convolutions run fastest in with mixed precision on GPUs.
        self.backbone = backbone.to(memory_format=torch.channels_last)
        self.epoch_loss = MeanMetric()
        # Of the last training batch: the backbone's features (encode) and the embedding the
        # loss works on (the head named by `embedding_head`), for training.guards.
        self.feature_spread: torch.Tensor | None = None
        self.embedding_spread: torch.Tensor | None = None
        self.last_epoch_loss: float | None = None
        # Colour jitter, grayscale, blur, solarize and normalisation of each uint8 view, per
        # batch, on the accelerator (medssl.data.batch_augment.ViewColour).
        self.batch_transform = batch_transform
        # Kept out of the module tree: the compiled wrapper shares the backbone's weights, and a
        # second registration would write every weight twice into checkpoints.
        self.__dict__["_encode"] = torch.compile(self.backbone) if compile_model else self.backbone
        self.build(feature_dim, **settings)
        # After build: the momentum copies it made carry no hook (a deep copy would copy it).
        head = getattr(self, self.embedding_head, None)
        if head is not None:
            head.register_forward_hook(self._keep_embedding_spread)

    # What a method defines --------------------------------------------------------------
    def build(self, feature_dim: int, **settings) -> None:
        raise NotImplementedError

    @staticmethod
    def views(image_size: int, colour: dict, **settings) -> list[View]:
        return two_views(image_size, colour)

    @staticmethod
    def fit_to_data(settings: dict, train_images: int, batch_size: int, image_size: int) -> dict:
        """The defaults adjusted to a dataset of `train_images` per process read in batches of
        `batch_size` at `image_size` px. Published defaults assume ImageNet; a method whose
        default breaks on a small dataset (MoCo's queue) or small pictures (multi-crop's local
        crops) overrides this. The pretraining driver applies the changes
        to the defaults only, never to a value the user set, and records both."""
        return settings

    def loss(self, views: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # What every method shares -----------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        out = self._encode(x)
        if self.training:  # read by training.guards: near 0 when every image looks alike
            self.feature_spread = spread(out)
        return out

    def _keep_embedding_spread(self, module, inputs, output) -> None:
        """A forward hook on the embedding head: its output's spread, for training.guards."""
        if self.training and torch.is_tensor(output):
            self.embedding_spread = spread(output)

    @staticmethod
    def momentum_copy(module: nn.Module) -> nn.Module:
        """A copy that follows `module` by averaging (`follow`), never by gradients."""
        import copy

        from lightly.models.utils import deactivate_requires_grad

        twin = copy.deepcopy(module)
        deactivate_requires_grad(twin)
        return twin

    def follow(self, pairs, momentum: float) -> None:
        """Move each momentum copy towards its module, the momentum rising from `momentum` to 1
        on a cosine over the run (BYOL's schedule; MoCo and DINO use it too). Read from the
        global step, which a checkpoint restores: a resumed run follows the same schedule."""
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(self.global_step, max(1, int(self.trainer.estimated_stepping_batches)),
                            momentum, 1.0)
        for module, twin in pairs:
            update_momentum(module, twin, m)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        views, labels = batch
        if self.batch_transform is not None and views[0].dtype == torch.uint8:
            g = torch.Generator().manual_seed(augment_seed(self.hparams.seed, self.global_step))
            views = self.batch_transform(list(views), generator=g)
        return list(views), labels

    def training_step(self, batch, batch_idx):
        views, labels = batch
        loss = self.loss(views, labels)
        self.log("train_loss_step", loss, prog_bar=True)
        self.epoch_loss.update(loss.detach())
        return loss

    def on_train_epoch_end(self):
        # Written at once, before the epoch's checkpoint (see run_logs.log_now); the mean is
        # reduced over ranks by torchmetrics.
        self.last_epoch_loss = float(self.epoch_loss.compute())
        log_now(self.trainer, {"train_loss_epoch": self.last_epoch_loss})
        self.epoch_loss.reset()

    # Kept in checkpoints, for a run resumed after its last epoch (it trains nothing more).
    def on_save_checkpoint(self, checkpoint):
        checkpoint["last_epoch_loss"] = self.last_epoch_loss

    def on_load_checkpoint(self, checkpoint):
        self.last_epoch_loss = checkpoint.get("last_epoch_loss")

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:  # momentum copies follow by averaging, not by gradients
                continue
            # BatchNorm weights and biases are 1-D: the usual rule for leaving them undecayed.
            (no_decay if hp.exclude_bn_bias and p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": hp.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        # `lr` is for one process's batch; several processes train on a larger global batch.
        lr = scaled_lr(hp.lr, self.trainer.world_size, hp.lr_scaling, hp.optimizer)
        if hp.optimizer == "lars":
            opt = LARS(groups, lr=lr, momentum=0.9)
        elif hp.optimizer == "sgd":  # with momentum, as SimSiam, MoCo and SwAV publish
            opt = torch.optim.SGD(groups, lr=lr, momentum=0.9)
        else:
            opt = torch.optim.Adam(groups, lr=lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, self.trainer.max_epochs or 1)
        warmup = min(total - 1, round(total * hp.warmup_epochs / epochs))

        def factor(step: int) -> float:
            return cosine_warmup_schedule(step, total, 1.0, 0.0, warmup, 0.0)

        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
