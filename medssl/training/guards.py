"""Stop a pretraining that has failed, at once and with what to change, instead of letting it run
on for hours: a loss that is no longer a number (the run diverged), or a representation that
collapsed (every image embedded alike, from which no method recovers).

Lightning's own `detect_anomaly` slows every step and names an autograd node, not a setting;
EarlyStopping's `check_finite` needs a monitored value each epoch. This callback reads the loss
and the spreads the method keeps of its last batch (the backbone's features, `SSLMethod.encode`,
and the embedding its loss compares) as tensors, and looks at them every CHECK_EVERY steps and
at each epoch's end, so that a GPU is not made to wait each step.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch

from medssl.errors import MedsslError

# The spread of a batch's L2-normalised backbone features: the std across the batch, averaged
# over the feature dimensions. A collapsed network gives every image the same direction (spread
# 0, or 0 from all-zero features); a random ResNet-18 or -50 on real pictures, and every
# pretrained one measured, lies far above this bar (docs/methods.md, "Guards").
COLLAPSE_SPREAD = 1e-4
CHECK_EVERY = 10  # steps between looks (each one a single all-reduce under DDP)


class Guard(pl.Callback):
    """Raise MedsslError naming the method, the step and the settings to change when the loss
    stops being finite or the features collapse."""

    def __init__(self, title: str, lr: float, hint: str = "", every: int = CHECK_EVERY):
        self.title, self.lr, self.hint, self.every = title, lr, hint, every
        self.diverged: torch.Tensor | None = None  # sticky: a NaN step poisons every later one
        self.bad_loss: torch.Tensor | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach()
        finite = torch.isfinite(loss).all()
        if self.diverged is None:
            self.diverged, self.bad_loss = ~finite, loss
        else:  # kept on the device: no wait for the GPU here
            self.bad_loss = torch.where(self.diverged, self.bad_loss, loss)
            self.diverged = self.diverged | ~finite
        if trainer.global_step % self.every == 0:
            self.look(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        self.look(trainer, pl_module)

    def look(self, trainer, pl_module) -> None:
        if self.diverged is None:
            return
        spreads = {what: s for what, s in (("features", getattr(pl_module, "feature_spread", None)),
                                           ("embedding", getattr(pl_module, "embedding_spread",
                                                                 None))) if s is not None}
        which = min(spreads, key=lambda w: float(spreads[w]), default=None)
        spread = spreads.get(which)
        collapsed = spread is not None and bool(spread < COLLAPSE_SPREAD)
        strategy = trainer.strategy
        # Every process stops together: one that raised alone would leave the others waiting.
        diverged = strategy.reduce_boolean_decision(bool(self.diverged), all=False)
        collapsed = strategy.reduce_boolean_decision(collapsed, all=False)
        step, epoch = trainer.global_step, trainer.current_epoch + 1
        fix = (f"Fix: a lower learning rate (--lr; this run's is {self.lr:g}, e.g. "
               f"--lr {self.lr / 10:g})" + (f", or {self.hint}" if self.hint else "") +
               "; docs/methods.md lists each method's settings.")
        if diverged:
            value = float(self.bad_loss) if self.bad_loss is not None else math.nan
            raise MedsslError(f"{self.title}: the loss became {value} by step {step} (epoch "
                              f"{epoch}): the training diverged, and nothing it learned since is "
                              f"usable. {fix}")
        if collapsed:
            what = "backbone features" if which == "features" else "embedding"
            raise MedsslError(f"{self.title} collapsed by step {step} (epoch {epoch}): every "
                              f"image gets nearly the same {what} (their spread across the batch "
                              f"is {float(spread):.1e}, below {COLLAPSE_SPREAD:g}), and training "
                              f"on cannot undo that. {fix}")
