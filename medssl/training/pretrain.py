"""A SimCLR pretraining run: data, module and Trainer in; `backbone.pt` and its JSON out.

The output folder holds `backbone.pt` (a plain torchvision state_dict, `fc` = Identity),
`backbone.json` (how it was made), `split.csv`, `checkpoints/last.ckpt` for `--resume`, and the
TensorBoard logs. SimCLR sees only the train split, never val or test images.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medssl.errors import MedsslError


@dataclass
class PretrainConfig:
    dataset: str
    init: str = "random"
    data_root: str | None = None
    arch: str | None = None
    image_size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    warmup_epochs: int | None = None
    weight_decay: float = 1e-6
    temperature: float = 0.1
    optimizer: str = "adam"
    exclude_bn_bias: bool = False
    augment: str | None = None
    imagenet_weights: str = "IMAGENET1K_V1"
    seed: int = 0
    out: str | None = None
    resume: bool = False
    force: bool = False
    accelerator: str = "auto"
    devices: str = "auto"
    precision: str | None = None
    num_workers: int | None = None
    skip_bad_images: bool = False
    split_file: str | None = None
    val_fraction: float | None = None
    test_fraction: float | None = None
    max_steps: int = -1
    progress: bool = True
    extra: dict = field(default_factory=dict)


def default_out(dataset: str, init: str) -> Path:
    return Path("runs") / dataset / f"ssl-{init}"


def resolve(cfg: PretrainConfig) -> PretrainConfig:
    """Fill every unset value from the dataset's preset."""
    from medssl.presets import preset_for

    p = preset_for(cfg.dataset)
    cfg.arch = cfg.arch or p.arch
    cfg.image_size = cfg.image_size or p.image_size
    cfg.epochs = p.ssl_epochs if cfg.epochs is None else cfg.epochs
    cfg.batch_size = cfg.batch_size or p.ssl_batch_size
    cfg.lr = cfg.lr or p.ssl_lr
    cfg.warmup_epochs = p.ssl_warmup_epochs if cfg.warmup_epochs is None else cfg.warmup_epochs
    cfg.augment = cfg.augment or p.augment
    cfg.out = cfg.out or str(default_out(cfg.dataset, cfg.init))
    if cfg.num_workers is None:
        cfg.num_workers = min(8, os.cpu_count() or 1)
    if cfg.epochs < 1:
        raise MedsslError(f"--epochs must be at least 1, got {cfg.epochs}.")
    return cfg


def run_pretrain(cfg: PretrainConfig) -> Path:
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader

    from medssl import __version__
    from medssl.data import DataConfig, prepare
    from medssl.data.splits import write_split_csv
    from medssl.data.torch_dataset import ImageDataset
    from medssl.data.transforms import eval_transform, simclr_transform
    from medssl.models import build_backbone, feature_dim, save_backbone
    from medssl.presets import preset_for
    from medssl.training.knn import KNNMonitor
    from medssl.training.simclr import SimCLR

    cfg = resolve(cfg)
    out = Path(cfg.out)
    if (out / "backbone.pt").is_file() and not cfg.force:
        raise MedsslError(f"{out} already holds a finished pretraining (backbone.pt). "
                          "Fix: pass --force to run it again, or --out another folder.")
    last_ckpt = out / "checkpoints" / "last.ckpt"
    if cfg.resume and not last_ckpt.is_file():
        raise MedsslError(f"--resume: no checkpoint at {last_ckpt}. Fix: drop --resume to start anew.")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    started = time.time()

    split_file = cfg.split_file
    if cfg.resume and not split_file and (out / "split.csv").is_file():
        split_file = str(out / "split.csv")  # a resumed run keeps its split
    table, data_info = prepare(DataConfig(cfg.dataset, cfg.data_root, cfg.seed, cfg.val_fraction,
                                          cfg.test_fraction, split_file),
                               skip_bad_images=cfg.skip_bad_images, progress=cfg.progress)
    out.mkdir(parents=True, exist_ok=True)
    write_split_csv(table.samples, out / "split.csv")

    p = preset_for(cfg.dataset)
    min_side = cfg.image_size
    train_views = ImageDataset(table, "train", simclr_transform(cfg.image_size, p.mean, p.std,
                                                                cfg.augment), min_side)
    if len(train_views) < 2:
        raise MedsslError(f"The train split of {cfg.dataset} has {len(train_views)} image(s); "
                          "SimCLR needs at least 2.")
    batch_size = min(cfg.batch_size, len(train_views))
    loader_args = dict(num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
                       pin_memory=torch.cuda.is_available())
    train_loader = DataLoader(train_views, batch_size=batch_size, shuffle=True, drop_last=True,
                              **loader_args)
    plain = eval_transform(cfg.image_size, p.mean, p.std)
    knn = KNNMonitor(
        DataLoader(ImageDataset(table, "train", plain, min_side), batch_size=batch_size, **loader_args),
        DataLoader(ImageDataset(table, "val", plain, min_side), batch_size=batch_size, **loader_args),
        num_classes=len(table.classes))

    backbone = build_backbone(cfg.arch, cfg.init, cfg.imagenet_weights)
    module = SimCLR(backbone, feature_dim(cfg.arch), lr=cfg.lr, weight_decay=cfg.weight_decay,
                    warmup_epochs=cfg.warmup_epochs, temperature=cfg.temperature,
                    optimizer=cfg.optimizer, exclude_bn_bias=cfg.exclude_bn_bias)
    precision = cfg.precision or ("bf16-mixed" if torch.cuda.is_available()
                                  and torch.cuda.is_bf16_supported() else "32-true")
    trainer = pl.Trainer(
        max_epochs=cfg.epochs, max_steps=cfg.max_steps, accelerator=cfg.accelerator,
        devices=cfg.devices, precision=precision, default_root_dir=str(out),
        logger=TensorBoardLogger(str(out), name="tensorboard", version=""),
        callbacks=[ModelCheckpoint(dirpath=str(out / "checkpoints"), save_last=True,
                                   save_top_k=0), knn, LearningRateMonitor("step")],
        enable_progress_bar=cfg.progress, log_every_n_steps=1, enable_model_summary=False)
    trainer.fit(module, train_loader, ckpt_path=str(last_ckpt) if cfg.resume else None)

    if trainer.global_rank == 0:
        loss = trainer.callback_metrics.get("train_loss_epoch")
        meta = {
            "arch": cfg.arch, "init": cfg.init, "dataset": cfg.dataset,
            "imagenet_weights": cfg.imagenet_weights if cfg.init == "imagenet" else None,
            "image_size": cfg.image_size, "normalize": {"mean": list(p.mean), "std": list(p.std)},
            "epochs": trainer.current_epoch, "steps": trainer.global_step,
            "batch_size": batch_size, "lr": cfg.lr, "augment": cfg.augment,
            "final_loss": float(loss) if loss is not None else None,
            "final_knn_acc": knn.last, "seed": cfg.seed, "split_file": "split.csv",
            "data": data_info, "medssl_version": __version__,
            "wall_time_s": round(time.time() - started, 1),
            "config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
        }
        save_backbone(module.backbone, out / "backbone.pt", meta)
    return out
