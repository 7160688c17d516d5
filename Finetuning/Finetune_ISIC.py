"""Finetuning on isic: `python Finetuning/Finetune_ISIC.py --data-root DIR --model M1|M2|M3|M4`.

Every flag of `medssl finetune` passes through; the defaults are the study's preset for isic.
M2 and M4 read the SimCLR backbone from runs/isic/ssl-random or ssl-imagenet (see Pretraining/),
or from --ssl-checkpoint PATH.
"""

from medssl.scripts import finetune

if __name__ == "__main__":
    finetune("isic")
