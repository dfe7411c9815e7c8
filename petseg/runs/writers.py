"""Outputs as writers: each output of a case is one `OutputWriter` (its option, its files,
its writable check, its stale-file cleanup, its part of the results entry), registered in
`OUTPUT_WRITERS` in the order they write.

    MaskWriter         the mask (required: its failure fails the case), lesion volume,
                       plausibility, the clicks used
    DicomSegWriter     DICOM input: the mask as a DICOM SEG (`--no-dicom-seg`, `--seg-uid-seed`)
    ProbabilityWriter  the ensemble probability (`--save-probability`)
    ExtrasWriter       lesion report, MIP picture, uncertainty map (`--extras DIR`)

A new output is one subclass decorated with `register_output`. A writer is a frozen
dataclass whose fields are its options (picklable, so worker processes get them); a
writer whose option is off still names its files, so a failed case loses the file an
earlier run left. Folder names live in `petseg.io.outputs`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import SimpleITK as sitk

from petseg.errors import PetsegError
from petseg.io.cases import CaseFiles, is_interactive
from petseg.io.images import check_writable, write_image
from petseg.io.outputs import (
    INTERACTIVE_MASK_FOLDER,
    MASK_FOLDER,
    PROBABILITY_FOLDER,
    SEG_FOLDER,
    mask_folder,
    output_file,
)
from petseg.io.plausibility import implausible_result
from petseg.progress import CaseProgress

if TYPE_CHECKING:  # the command line's options need neither torch nor the network
    from petseg.inference.predictor import Prediction
    from petseg.interactive.clicks import Clicks

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PredictedCase:
    """One predicted case, handed to every writer.

    Attributes:
        files: the case's input files.
        pet: the PET (SUV) as read: the outputs' grid.
        prediction: mask and the probabilities the writers asked for, on the PET grid.
        clicks: the clicks used (interactive case), else None.
        ensemble: what made the mask: {"folds", "ensemble", "threshold"} as text.
        output_dir: the run's output folder.
        start: `time.perf_counter()` when the case started.
    """

    files: CaseFiles
    pet: sitk.Image
    prediction: Prediction
    clicks: Clicks | None
    ensemble: dict[str, str]
    output_dir: Path
    start: float


@dataclasses.dataclass(frozen=True)
class OutputWriter:
    """One output of a case. Subclasses set the class attributes, add their options as
    dataclass fields (named as the command line's destinations) and override what applies.

    Class attributes:
        what: the output in messages ("probability map").
        required: its failure fails the case (the mask); else it is recorded in the
            entry's `error_messages` and the mask stays.
        needs: `Prediction` fields it reads besides the mask ("probability",
            "fold_probabilities").
    """

    what: ClassVar[str] = "output"
    required: ClassVar[bool] = False
    needs: ClassVar[frozenset[str]] = frozenset()

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Register the writer's options (none by default)."""

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> OutputWriter:
        """The writer with the options of the command line."""
        return cls(**{field.name: getattr(args, field.name)
                      for field in dataclasses.fields(cls)})

    @property
    def enabled(self) -> bool:
        """Whether this run writes the output."""
        return True

    def applies(self, files: CaseFiles) -> bool:
        """Whether the output exists for this kind of case."""
        return True

    def settings(self) -> dict[str, Any]:
        """The options that shape the output (recorded for `--continue`)."""
        return dataclasses.asdict(self)

    def check_options(self, output_dir: Path) -> None:
        """Refuse options that cannot work (before any case is looked at)."""

    def check_folders(self, output_dir: Path, cases: Sequence[CaseFiles]) -> None:
        """Prove the folders this run writes for `cases` are writable (`PetsegError`)."""

    def files(self, output_dir: Path, files: CaseFiles) -> list[Path]:
        """The files this output may hold for the case: removed when the case fails, or
        when writing this output fails."""
        return []

    def write(self, case: PredictedCase, entry: dict[str, Any]) -> None:
        """Write the output and record it in the case's results `entry`."""
        raise NotImplementedError


OUTPUT_WRITERS: list[type[OutputWriter]] = []
"""The registered writers, in the order they write (the mask first)."""


def register_output(cls: type[OutputWriter]) -> type[OutputWriter]:
    """Class decorator: add a writer to `OUTPUT_WRITERS` (once)."""
    if cls not in OUTPUT_WRITERS:
        OUTPUT_WRITERS.append(cls)
    return cls


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Every registered writer's options."""
    for cls in OUTPUT_WRITERS:
        cls.add_arguments(parser)


def writers_from_arguments(args: argparse.Namespace) -> tuple[OutputWriter, ...]:
    """Every registered writer, with the command line's options."""
    return tuple(cls.from_arguments(args) for cls in OUTPUT_WRITERS)


def output_writers(**options: Any) -> tuple[OutputWriter, ...]:
    """Every registered writer, each with the `options` among its fields (the others
    default), e.g. `output_writers(save_probability=True, extras_dir=folder)`."""
    unknown = set(options) - {field.name for cls in OUTPUT_WRITERS
                              for field in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"no output takes the option(s) {sorted(unknown)}")
    return tuple(cls(**{field.name: options[field.name] for field in dataclasses.fields(cls)
                        if field.name in options}) for cls in OUTPUT_WRITERS)


def writers_settings(writers: Iterable[OutputWriter]) -> dict[str, Any]:
    """The options of all `writers` that shape the outputs, as one dict."""
    return {key: value for writer in writers for key, value in writer.settings().items()}


def needed(writers: Iterable[OutputWriter], field: str) -> bool:
    """Whether an enabled writer reads `field` of the prediction."""
    return any(writer.enabled and field in writer.needs for writer in writers)


def remove_outputs(writers: Iterable[OutputWriter], output_dir: Path, files: CaseFiles) -> None:
    """Remove every file of the case an earlier run may have left, so none outlives a
    failure."""
    for writer in writers:
        for path in writer.files(output_dir, files):
            path.unlink(missing_ok=True)


def message_of(exc: BaseException) -> str:
    """A one-line message: a `PetsegError`'s own, else the exception's type and text."""
    return str(exc) if isinstance(exc, PetsegError) else f"{type(exc).__name__}: {exc}"


def write_outputs(writers: Sequence[OutputWriter], case: PredictedCase) -> dict[str, Any]:
    """Write the case's outputs; returns its results entry.

    The required writers come first and raise on failure; a failing optional output is
    logged, recorded in `error_messages` ("<what> not written: ..."), its files removed, and
    never takes the mask with it."""
    from petseg.runs.results import results_entry

    entry = results_entry(case.files, None, None, 0.0, None)
    for writer in writers:
        if not (writer.enabled and writer.applies(case.files)):
            continue
        if writer.required:
            writer.write(case, entry)
            continue
        try:
            writer.write(case, entry)
        except Exception as exc:
            message = message_of(exc)
            log.error("case %s: %s not written (the mask is): %s", case.files.name,
                      writer.what, message)
            log.debug("case %s: %s failed", case.files.name, writer.what, exc_info=True)
            for path in writer.files(case.output_dir, case.files):
                path.unlink(missing_ok=True)
            entry["error_messages"].append(f"{writer.what} not written: {message}")
    return entry


# --------------------------------------------------------------------------- the writers


@register_output
@dataclasses.dataclass(frozen=True)
class MaskWriter(OutputWriter):
    """The uint8 0/1 mask on the PET grid, in the slug's folder (`mask_folder`); the entry
    gets the mask, `seconds`, `lesion_volume_ml`, `implausible` (why no patient has such
    a volume) and `clicks` (the points used)."""

    what: ClassVar[str] = "mask"
    required: ClassVar[bool] = True

    def check_folders(self, output_dir: Path, cases: Sequence[CaseFiles]) -> None:
        for folder in {mask_folder(is_interactive(files)) for files in cases}:
            check_writable(Path(output_dir).joinpath(*folder))

    def files(self, output_dir: Path, files: CaseFiles) -> list[Path]:
        return [output_file(output_dir, folder, files.name)
                for folder in (MASK_FOLDER, INTERACTIVE_MASK_FOLDER)]

    def write(self, case: PredictedCase, entry: dict[str, Any]) -> None:
        files, mask = case.files, case.prediction.mask
        CaseProgress(files.name).stage("writing the mask")
        target = write_image(mask, output_file(case.output_dir,
                                               mask_folder(case.clicks is not None), files.name))
        lesion_ml = float(sitk.GetArrayViewFromImage(mask).sum()
                          * np.prod(mask.GetSpacing()) / 1000.0)
        seconds = time.perf_counter() - case.start
        log.info("case %s: %.1f ml of lesion, %.1f s -> %s", files.name, lesion_ml, seconds,
                 target)
        entry["outputs"].insert(0, {"type": "metaio_image", "filename": str(target)})
        entry["seconds"], entry["lesion_volume_ml"] = round(seconds, 3), round(lesion_ml, 3)
        implausible = implausible_result(mask, case.pet)
        if implausible is not None:
            log.warning("case %s: implausible result: %s", files.name, implausible)
            entry["implausible"] = implausible
        if case.clicks is not None:  # the points used: those inside the PET image
            entry["clicks"] = {"file": None if files.clicks is None else str(files.clicks),
                               **case.clicks.counts()}


@register_output
@dataclasses.dataclass(frozen=True)
class DicomSegWriter(OutputWriter):
    """A DICOM study's mask as a DICOM SEG under `OUTPUT/dicom-seg/` (`petseg.io.dicom_seg`);
    `seg_uid_seed` makes its UIDs reproducible."""

    what: ClassVar[str] = "DICOM SEG"
    dicom_seg: bool = True
    seg_uid_seed: str | None = None

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dicom-seg", action=argparse.BooleanOptionalAction, default=True,
                            help="DICOM input: also write each study's mask as a DICOM SEG "
                                 "under OUTPUT/dicom-seg/ (default: on)")
        parser.add_argument("--seg-uid-seed", default=None, metavar="TEXT",
                            help="derive the DICOM SEG's series and instance UIDs from TEXT, "
                                 "the study and the mask, so a rerun writes the same UIDs "
                                 "(default: fresh UIDs)")

    @property
    def enabled(self) -> bool:
        return self.dicom_seg

    def applies(self, files: CaseFiles) -> bool:
        return files.dicom is not None

    def check_folders(self, output_dir: Path, cases: Sequence[CaseFiles]) -> None:
        if self.enabled and any(self.applies(files) for files in cases):
            check_writable(Path(output_dir).joinpath(*SEG_FOLDER))

    def files(self, output_dir: Path, files: CaseFiles) -> list[Path]:
        return [output_file(output_dir, SEG_FOLDER, files.name, ".dcm")]

    def write(self, case: PredictedCase, entry: dict[str, Any]) -> None:
        from petseg.io.dicom_seg import build_dicom_seg, save_dicom_seg

        assert case.files.dicom is not None
        seg = build_dicom_seg(case.files.dicom, case.prediction.mask, self.seg_uid_seed,
                              case.ensemble)
        path = save_dicom_seg(seg, output_file(case.output_dir, SEG_FOLDER, case.files.name,
                                               ".dcm"))
        entry["outputs"].append({"type": "dicom_seg", "filename": str(path)})


@register_output
@dataclasses.dataclass(frozen=True)
class ProbabilityWriter(OutputWriter):
    """The float32 ensemble probability on the PET grid under `OUTPUT/probabilities/`."""

    what: ClassVar[str] = "probability map"
    needs: ClassVar[frozenset[str]] = frozenset({"probability"})
    save_probability: bool = False

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--save-probability", action="store_true",
                            help="also write the ensemble probability (float32, PET grid) "
                                 "under OUTPUT/probabilities/")

    @property
    def enabled(self) -> bool:
        return self.save_probability

    def check_folders(self, output_dir: Path, cases: Sequence[CaseFiles]) -> None:
        if self.enabled:
            check_writable(Path(output_dir).joinpath(*PROBABILITY_FOLDER))

    def files(self, output_dir: Path, files: CaseFiles) -> list[Path]:
        return [output_file(output_dir, PROBABILITY_FOLDER, files.name)]

    def write(self, case: PredictedCase, entry: dict[str, Any]) -> None:
        assert case.prediction.probability is not None
        write_image(case.prediction.probability,
                    output_file(case.output_dir, PROBABILITY_FOLDER, case.files.name))


@register_output
@dataclasses.dataclass(frozen=True)
class ExtrasWriter(OutputWriter):
    """Each case's lesion report, MIP picture and (two or more folds) uncertainty map in
    `extras_dir`, outside the challenge folder (`petseg.clinical.report.write_extras`); a
    DICOM study's report keeps its identifiers. The entry gets `extras` (paths by kind) or
    `extras_error`; a failed write leaves none of the case's extras."""

    what: ClassVar[str] = "extras"
    needs: ClassVar[frozenset[str]] = frozenset({"fold_probabilities"})
    extras_dir: Path | None = None

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--extras", dest="extras_dir", type=Path, default=None,
                            metavar="DIR",
                            help="also write per case a lesion report (JSON, CSV), a MIP "
                                 "picture and, with two or more folds, an uncertainty map "
                                 "into DIR (default: off; keep DIR outside the challenge "
                                 "output folder)")

    @property
    def enabled(self) -> bool:
        return self.extras_dir is not None

    def check_options(self, output_dir: Path) -> None:
        if self.extras_dir is None:
            return
        extras = Path(self.extras_dir).resolve()
        for folder in (MASK_FOLDER, INTERACTIVE_MASK_FOLDER):
            masks = Path(output_dir).joinpath(*folder).resolve()
            if extras == masks or masks in extras.parents:
                raise PetsegError(f"--extras {self.extras_dir}: lies in the challenge mask "
                                  f"folder {masks}, which must hold only masks; choose "
                                  "another folder")

    def check_folders(self, output_dir: Path, cases: Sequence[CaseFiles]) -> None:
        if self.extras_dir is not None:
            check_writable(self.extras_dir)

    def files(self, output_dir: Path, files: CaseFiles) -> list[Path]:
        if self.extras_dir is None:
            return []
        from petseg.clinical.report import extras_paths

        return list(extras_paths(self.extras_dir, files.name).values())

    def write(self, case: PredictedCase, entry: dict[str, Any]) -> None:
        from petseg.clinical.report import write_extras

        assert self.extras_dir is not None
        files = case.files
        try:
            paths = write_extras(files.name, case.pet, case.prediction.mask, self.extras_dir,
                                 fold_probabilities=case.prediction.fold_probabilities,
                                 identifiers=files.dicom.identifiers() if files.dicom else None)
        except Exception as exc:
            entry["extras_error"] = message_of(exc)
            raise
        entry["extras"] = {kind: str(path) for kind, path in paths.items()}
