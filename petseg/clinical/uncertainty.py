"""Ensemble disagreement: voxel-wise spread of the fold models' lesion probabilities."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from petseg.errors import PetsegError
from petseg.io.geometry import check_same_grid


def fold_std(fold_probabilities: list[sitk.Image]) -> sitk.Image:
    """Voxel-wise standard deviation of the folds' lesion probabilities.

    Args:
        fold_probabilities: one lesion-probability image (values 0..1) per fold model,
            all on the same grid (the PET grid); at least two.

    Returns:
        float32 image on that grid; population standard deviation (ddof 0), so values
        lie in 0..0.5, with 0.5 where half the folds say 0 and half say 1.
    """
    if len(fold_probabilities) < 2:
        raise PetsegError(
            f"fold probabilities: {len(fold_probabilities)} given, the spread needs at least "
            f"two fold models; use an ensemble of two or more folds"
        )
    reference = fold_probabilities[0]
    for index, image in enumerate(fold_probabilities[1:], start=1):
        check_same_grid(image, reference, f"fold probability {index}", "fold probability 0")
    # Two passes over the folds hold three float32 volumes, never a stack of all folds.
    mean = np.zeros(sitk.GetArrayViewFromImage(reference).shape, dtype=np.float32)
    for image in fold_probabilities:
        mean += sitk.GetArrayViewFromImage(image)
    mean /= len(fold_probabilities)
    squares = np.zeros_like(mean)
    difference = np.empty_like(mean)
    for image in fold_probabilities:
        np.subtract(sitk.GetArrayViewFromImage(image), mean, out=difference)
        np.multiply(difference, difference, out=difference)
        squares += difference
    squares /= len(fold_probabilities)
    result = sitk.GetImageFromArray(np.sqrt(squares))
    result.CopyInformation(reference)
    return result
