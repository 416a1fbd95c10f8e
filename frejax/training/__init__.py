"""Training: the train state, the run context, the step and loop, checkpoints, evaluation, AOT."""
