"""Lightning modules and the runs built from them: SimCLR pretraining (and, next, finetuning)."""
