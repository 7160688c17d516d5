"""Self-supervised pretraining on isic: `python Pretraining/SSL_ISIC.py --data-root DIR --init random|imagenet
[--method simclr|moco|byol|simsiam|barlowtwins|vicreg|swav|dino|supcon]` (default simclr, the study's).

Every flag of `medssl pretrain` passes through; the defaults are the study's preset for isic.
"""

from medssl.scripts import pretrain

if __name__ == "__main__":
    pretrain("isic")
