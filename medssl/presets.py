"""The study's per-dataset settings ("paper" presets) and the small demo preset.

Source: the study's code and paper, as summarised in shared/datasets.md. Every value can be
overridden by a flag; the preset only supplies defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, kw_only=True)
class Preset:
    ssl_batch_size: int
    ssl_epochs: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    finetune_batch_size: int
    finetune_epochs: int
    finetune_lr: float
    augment: str = "study"  # SimCLR augmentation preset: "study" or "xray"
    image_size: int = 224
    arch: str = "resnet50"
    ssl_lr: float = 1e-3
    ssl_warmup_epochs: int = 10
    # The fewest optimiser steps a pretraining gets when --epochs is not given: a small dataset
    # makes few steps per epoch (300 images at batch 128: 2), so `ssl_epochs` alone would leave
    # it undertrained. On the digits set (1221 train images, 9 steps an epoch) 270 steps left
    # SimSiam, BYOL and SwAV below their random init and 900 took all nine methods above it
    # (docs/methods.md). Epochs are raised to reach it (pretrain.epochs_for), never lowered.
    ssl_min_steps: int = 1000
    # Finetuning flips the anatomy allows: dermoscopy has no up or left, a fundus may be mirrored
    # (left and right eyes), a chest X-ray may not (the heart is on the left).
    flips: str = ""
    # Knobs of the SimCLR augmentation preset this dataset overrides (lightly's names).
    ssl_aug: tuple = ()
    # Label fractions `medssl compare` runs when --label-fractions is not given.
    label_fractions: tuple = (1.0,)
    # Labels that are grades (IDRiD's 0-4): quadratic weighted kappa is reported too.
    ordinal: bool = False
    # Binary tasks: the class sensitivity is measured for (default: the last class).
    positive_class: str | None = None
    # The finetuning learning rates `compare` chooses among on val, per prior (every prior gets
    # the same chance: the study's Adam 1e-5 suits pretrained weights and leaves a random init
    # undertrained). `--lr` fixes one rate instead, `--lr-grid` sets another grid.
    lr_grid: tuple = (1e-5, 1e-4, 1e-3)
    # The primary endpoint, when not the task's default (report.comparisons.default_primary:
    # QWK for graded labels, AUROC for two classes, balanced accuracy otherwise).
    primary_metric: str | None = None


def _grey(m: float, s: float) -> dict:
    return {"mean": (m, m, m), "std": (s, s, s)}


PRESETS: dict[str, Preset] = {
    "ham10000": Preset(ssl_batch_size=160, ssl_epochs=200, mean=(0.6650, 0.5399, 0.5497),
                       std=(0.2662, 0.2687, 0.2729), finetune_batch_size=128, finetune_epochs=100,
                       finetune_lr=1e-5, flips="hv"),
    "isic": Preset(ssl_batch_size=160, ssl_epochs=200, mean=(0.6310, 0.5398, 0.5361),
                   std=(0.2764, 0.2748, 0.2783), finetune_batch_size=128, finetune_epochs=100,
                   finetune_lr=1e-5, flips="hv"),
    "covid19": Preset(ssl_batch_size=32, ssl_epochs=500, **_grey(0.4957, 0.3009),
                      finetune_batch_size=32, finetune_epochs=200, finetune_lr=1e-5, augment="xray"),
    "chest_xray": Preset(ssl_batch_size=128, ssl_epochs=200, **_grey(0.5346, 0.2793),
                         finetune_batch_size=128, finetune_epochs=100, finetune_lr=1e-5,
                         augment="xray", positive_class="PNEUMONIA"),
    "idrid": Preset(ssl_batch_size=32, ssl_epochs=200, mean=(0.4746, 0.3126, 0.2146),
                    std=(0.2818, 0.2516, 0.2050), finetune_batch_size=16, finetune_epochs=100,
                    finetune_lr=1e-4, flips="h", ordinal=True),
    # Small enough for a 2-core CPU in minutes; same code path as the real presets.
    # Crops of at least a quarter of the image: at 64 px a smaller crop is mostly skin. With 10% of
    # the labels too, the demo shows the regime where self-supervision is expected to matter.
    # The quick start must end within 10 minutes on a 2-core CPU with the fair defaults: 3
    # pretrainings (one per seed) and 24 finetunings (2 models x 2 label fractions x 3 seeds x
    # 2 learning rates). 32 px (it was 64) and 8 SimCLR / 5 finetuning epochs (20 / 6) pay for it.
    "demo": Preset(ssl_batch_size=32, ssl_epochs=8, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   finetune_batch_size=64, finetune_epochs=5, finetune_lr=1e-3, image_size=32,
                   arch="resnet18", ssl_warmup_epochs=2, flips="hv", ssl_aug=(("min_scale", 0.25),),
                   label_fractions=(1.0, 0.1), lr_grid=(1e-4, 1e-3),
                   ssl_min_steps=0),  # its budget is the quick start's ten minutes (README)
}
# Your own data (folder, csv): the study's recipe with ImageNet statistics.
GENERIC = Preset(ssl_batch_size=128, ssl_epochs=200, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 finetune_batch_size=128, finetune_epochs=100, finetune_lr=1e-5)


def preset_for(dataset: str) -> Preset:
    return PRESETS.get(dataset, GENERIC)
