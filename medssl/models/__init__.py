"""Backbones and their prior weights (random, ImageNet, SSL), and backbone checkpoint files."""

from medssl.models.backbones import ARCHS, build_backbone, feature_dim, load_backbone_file
from medssl.models.checkpoints import save_backbone
from medssl.models.timm_backbones import out_features

__all__ = ["ARCHS", "build_backbone", "feature_dim", "load_backbone_file", "out_features",
           "save_backbone"]
