"""Training: data discovery and splits, cache, GPU augmentation, loss, loop, DDP."""
