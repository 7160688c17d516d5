"""Lightning modules and the runs built from them: self-supervised pretraining, finetuning and its objectives."""
