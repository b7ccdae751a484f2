"""Training machinery: the DeepSpeed loop, its config and precision, checkpoints, the optimizer, the launcher
environment, seeding, losses, the run directory and the run log. What wires a run from them is
:mod:`emotrain.recipes.train`, a layer above."""
