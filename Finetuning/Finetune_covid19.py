"""Finetuning on covid19: `python Finetuning/Finetune_covid19.py --data-root DIR --model M1|M2|M3|M4`.

Every flag of `medssl finetune` passes through; the defaults are the study's preset for covid19.
M2 and M4 read the SimCLR backbone from runs/covid19/ssl-random or ssl-imagenet (see Pretraining/),
or from --ssl-checkpoint PATH.
"""

from medssl.scripts import finetune

if __name__ == "__main__":
    finetune("covid19")
