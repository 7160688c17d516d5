"""Backbones and their prior weights (random, ImageNet, SSL), and backbone checkpoint files."""

from medssl.models.backbones import ARCHS, build_backbone, feature_dim, load_backbone_file
from medssl.models.checkpoints import save_backbone

__all__ = ["ARCHS", "build_backbone", "feature_dim", "load_backbone_file", "save_backbone"]
