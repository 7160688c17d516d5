"""medssl: which starting weights should a medical-image classifier use? SSL vs ImageNet vs random."""

__version__ = "0.1.0"
