"""SimCLR in one LightningModule, from lightly's parts.

Two views of each image go through the backbone and a projection head; NT-Xent pulls the two views
of an image together and pushes every other image in the (globally gathered) batch away.
The learning rate warms up linearly, then decays with one cosine over the true number of optimiser
steps (the study's scheduler miscounted its steps and restarted its cosine several times).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.utils.lars import LARS
from lightly.utils.scheduler import cosine_warmup_schedule
from torch import nn
from torchmetrics import MeanMetric

from medssl.data.sampling import stream_seed
from medssl.training.distributed import scaled_lr
from medssl.training.run_logs import log_now


class SimCLR(pl.LightningModule):
    def __init__(self, backbone: nn.Module, feature_dim: int, lr: float = 1e-3,
                 weight_decay: float = 1e-6, warmup_epochs: int = 10, temperature: float = 0.1,
                 optimizer: str = "adam", exclude_bn_bias: bool = False, projection_dim: int = 128,
                 batch_transform: nn.Module | None = None, compile_model: bool = False,
                 seed: int = 0, lr_scaling: str = "linear"):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "batch_transform"])
        # channels-last is the layout convolutions run fastest in with mixed precision on GPUs.
        self.backbone = backbone.to(memory_format=torch.channels_last)
        self.projection_head = SimCLRProjectionHead(feature_dim, feature_dim, projection_dim)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)
        self.epoch_loss = MeanMetric()
        self.last_epoch_loss: float | None = None
        # Colour jitter, grayscale, blur and normalisation of the uint8 views, per batch, on the
        # accelerator (see medssl.data.batch_augment). None: the loader already made float views.
        self.batch_transform = batch_transform
        # Kept out of the module tree: the compiled wrapper shares the backbone's weights, and a
        # second registration would write every weight twice into checkpoints.
        self.__dict__["_encode"] = torch.compile(self.backbone) if compile_model else self.backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self._encode(x))

    def on_after_batch_transfer(self, batch, dataloader_idx):
        (view0, view1), labels = batch
        if self.batch_transform is not None and view0.dtype == torch.uint8:
            # Both views in one call: one set of kernels for the whole batch.
            # Seeded by (seed, step): a resumed run draws what an uninterrupted one would.
            g = torch.Generator().manual_seed(stream_seed(self.hparams.seed, self.global_step))
            both = self.batch_transform(torch.cat([view0, view1]), generator=g)
            view0, view1 = both.contiguous(memory_format=torch.channels_last).chunk(2)
        return (view0, view1), labels

    def training_step(self, batch, batch_idx):
        (view0, view1), _ = batch
        loss = self.criterion(self(view0), self(view1))
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
            # BatchNorm weights and biases are 1-D: the usual rule for leaving them undecayed.
            (no_decay if hp.exclude_bn_bias and p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": hp.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        # `lr` is for one process's batch; several processes train on a larger global batch.
        lr = scaled_lr(hp.lr, self.trainer.world_size, hp.lr_scaling)
        if hp.optimizer == "lars":
            opt = LARS(groups, lr=lr, momentum=0.9)
        else:
            opt = torch.optim.Adam(groups, lr=lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, self.trainer.max_epochs or 1)
        warmup = min(total - 1, round(total * hp.warmup_epochs / epochs))

        def factor(step: int) -> float:
            return cosine_warmup_schedule(step, total, 1.0, 0.0, warmup, 0.0)

        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
