"""Self-supervised pretraining on ham10000: `python Pretraining/SSL_HAM10000.py --data-root DIR --init random|imagenet
[--method simclr|moco|byol|simsiam|barlowtwins|vicreg|swav|dino|supcon]` (default simclr, the study's).

Every flag of `medssl pretrain` passes through; the defaults are the study's preset for ham10000.
"""

from medssl.scripts import pretrain

if __name__ == "__main__":
    pretrain("ham10000")
