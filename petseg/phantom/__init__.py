"""Synthetic whole-body FDG PET/CT phantoms with known lesions.

`generate_case(seed, size, cohort)` makes one study (PET in SUV, CT in HU on its own
grid, CTres on the PET grid, SEG); the writers lay cases out as grand-challenge inputs
or as the autoPET training set; `preview_png` draws a coronal MIP with outlines.
"""

from petseg.phantom.case import PhantomCase, draw_cohort, generate_case, generate_study
from petseg.phantom.layouts import (
    write_autopet_study,
    write_challenge_case,
    write_dataset,
    write_metadata_csv,
)
from petseg.phantom.lesions import LesionInfo
from petseg.phantom.preview import preview_png, render_preview

__all__ = [
    "LesionInfo",
    "PhantomCase",
    "draw_cohort",
    "generate_case",
    "generate_study",
    "preview_png",
    "render_preview",
    "write_autopet_study",
    "write_challenge_case",
    "write_dataset",
    "write_metadata_csv",
]
