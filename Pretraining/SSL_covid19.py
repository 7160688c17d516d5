"""Self-supervised pretraining on covid19: `python Pretraining/SSL_covid19.py --data-root DIR --init random|imagenet
[--method simclr|moco|byol|simsiam|barlowtwins|vicreg|swav|dino|supcon]` (default simclr, the study's).

Every flag of `medssl pretrain` passes through; the defaults are the study's preset for covid19.
"""

from medssl.scripts import pretrain

if __name__ == "__main__":
    pretrain("covid19")
