"""SimCLR pretraining on ham10000: `python Pretraining/SSL_HAM10000.py --data-root DIR --init random|imagenet`.

Every flag of `medssl pretrain` passes through; the defaults are the study's preset for ham10000.
"""

from medssl.scripts import pretrain

if __name__ == "__main__":
    pretrain("ham10000")
