"""Training engine: the loop, optimizer groups, lr schedule, precision, checkpoints, processes."""
