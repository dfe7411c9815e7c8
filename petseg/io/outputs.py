"""The output contract of a run: where each output of a case goes and the results file.

Grand-challenge's layout (evalutils-compatible `results.json`):

    OUTPUT/images/automated-petct-lesion-segmentation/<name>.mha   uint8 0/1 mask, PET grid
    OUTPUT/images/tumor-lesion-segmentation/<name>.mha   instead, for an interactive case
    OUTPUT/probabilities/<name>.mha   float32 ensemble probability (on request)
    OUTPUT/dicom-seg/<name>.dcm       DICOM input: the mask as a DICOM SEG
    OUTPUT/results.json               one entry per case (`results.part-K-of-N.json` for
                                      part K of N of an array job)

The writers of these files are `petseg.runs.writers`; this module only names them.
"""

from __future__ import annotations

from pathlib import Path

MASK_FOLDER: tuple[str, ...] = ("images", "automated-petct-lesion-segmentation")
"""The 2023 (automatic) slug's mask folder."""
INTERACTIVE_MASK_FOLDER: tuple[str, ...] = ("images", "tumor-lesion-segmentation")
"""The interactive (autoPET IV and V) slug's mask folder."""
PROBABILITY_FOLDER: tuple[str, ...] = ("probabilities",)
SEG_FOLDER: tuple[str, ...] = ("dicom-seg",)
RESULTS_NAME = "results.json"
INTERRUPTED = "not completed: the run was interrupted"
"""The error recorded for a case an interrupted run did not finish."""


def mask_folder(interactive: bool) -> tuple[str, ...]:
    """Where a case's mask goes: the interactive slug for a case with clicks, else the 2023
    one."""
    return INTERACTIVE_MASK_FOLDER if interactive else MASK_FOLDER


def output_file(output_dir: Path, folder: tuple[str, ...], name: str, suffix: str = ".mha"
                ) -> Path:
    """`output_dir/<folder...>/<name><suffix>`."""
    return Path(output_dir).joinpath(*folder, f"{name}{suffix}")


def results_name(num_parts: int | None = None, part_id: int | None = None) -> str:
    """`results.json`, or `results.part-K-of-N.json` for part K of N."""
    return RESULTS_NAME if num_parts is None else f"results.part-{part_id}-of-{num_parts}.json"
