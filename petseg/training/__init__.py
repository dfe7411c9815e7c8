"""Training: data discovery and splits, cache, GPU augmentation, loss, loop, DDP, and the
threshold calibration of trained weights on phantoms."""
