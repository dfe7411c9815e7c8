"""petseg: whole-body FDG PET/CT lesion segmentation (autoPET), inference and training."""

__version__ = "0.1.0"
