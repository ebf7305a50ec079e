"""The training engine: devices, LR plans, the loop, evaluation, checkpoints, run directory."""
