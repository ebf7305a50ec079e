"""The training engine: devices, LR plans, the loop, evaluation, checkpoints and the run directory."""
