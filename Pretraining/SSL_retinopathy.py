"""Self-supervised pretraining on idrid: `python Pretraining/SSL_retinopathy.py --data-root DIR --init random|imagenet
[--method simclr|moco|byol|simsiam|barlowtwins|vicreg|swav|dino|supcon]` (default simclr, the study's).

Every flag of `medssl pretrain` passes through; the defaults are the study's preset for idrid.
"""

from medssl.scripts import pretrain

if __name__ == "__main__":
    pretrain("idrid")
