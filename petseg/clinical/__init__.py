"""Outputs for a reader beside the challenge mask: lesion report, MIP pictures,
fold uncertainty."""
