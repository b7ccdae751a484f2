"""Training: the recipe that wires a run, the DeepSpeed loop, its config, checkpoints, optimizer,
preemption, the launcher environment, seeding, losses and the run log."""
