"""Small single-purpose helpers: boxes, nested tensors, distributed set-up, checkpoints, configs, logging."""
