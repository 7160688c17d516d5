"""Self-supervised pretraining on chest_xray: `python Pretraining/SSL_chestXray.py --data-root DIR --init random|imagenet
[--method simclr|moco|byol|simsiam|barlowtwins|vicreg|swav|dino|supcon]` (default simclr, the study's).

Every flag of `medssl pretrain` passes through; the defaults are the study's preset for chest_xray.
"""

from medssl.scripts import pretrain

if __name__ == "__main__":
    pretrain("chest_xray")
