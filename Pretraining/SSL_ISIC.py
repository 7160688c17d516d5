"""SimCLR pretraining on isic: `python Pretraining/SSL_ISIC.py --data-root DIR --init random|imagenet`.

Every flag of `medssl pretrain` passes through; the defaults are the study's preset for isic.
"""

from medssl.scripts import pretrain

if __name__ == "__main__":
    pretrain("isic")
