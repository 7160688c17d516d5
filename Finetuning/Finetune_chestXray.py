"""Finetuning on chest_xray: `python Finetuning/Finetune_chestXray.py --data-root DIR --model M1|M2|M3|M4`.

Every flag of `medssl finetune` passes through; the defaults are the study's preset for chest_xray.
M2 and M4 read the SimCLR backbone from runs/chest_xray/ssl-random or ssl-imagenet (see Pretraining/),
or from --ssl-checkpoint PATH.
"""

from medssl.scripts import finetune

if __name__ == "__main__":
    finetune("chest_xray")
