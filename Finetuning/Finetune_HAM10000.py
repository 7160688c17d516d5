"""Finetuning on ham10000: `python Finetuning/Finetune_HAM10000.py --data-root DIR --model M1|M2|M3|M4`.

Every flag of `medssl finetune` passes through; the defaults are the study's preset for ham10000.
M2 and M4 read the SimCLR backbone from runs/ham10000/ssl-random or ssl-imagenet (see Pretraining/),
or from --ssl-checkpoint PATH.
"""

from medssl.scripts import finetune

if __name__ == "__main__":
    finetune("ham10000")
