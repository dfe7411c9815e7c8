"""The CPU stages of one case beside inference, the previous way against the current one.

Read PET + CT, CT onto the PET grid, body mask and crop box, crop to 2 mm, probability
back to the PET grid: each stage run the previous way (kept here, callable) and the
current way (`petseg`), interleaved in one run (the order alternating between repeats),
`--repeat` times; the table gives the median seconds of each and the ratio. Then the two
paths' results are compared: crop box, network input, and the mask on the PET grid from a
probability made of each path's own input (the same function of the PET channel, or with
`--weights` a trained ensemble's).

The case is a full-size synthetic whole body (`petseg.phantom.generate_case(seed, "full")`:
PET 400 x 400 x ~322 at 2.0364 x 2.0364 x 3 mm, LAS; CT 512 x 512 on its own finer grid,
or with `--ct-grid pet` already on the PET grid, as autoPET's CTres) in the grand-challenge
layout.

    python benchmarks/cpu_stages.py [--repeat 5] [--seed 3] [--ct-grid native|pet]
                                    [--sitk-threads N] [--workdir DIR] [--weights DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from petseg.config import PreprocessingConfig
from petseg.evaluation.metrics import dice
from petseg.inference.postprocessing import probability_on_pet_grid, threshold_mask
from petseg.io.case_checks import check_overlap, check_units
from petseg.io.cases import Case, CaseFiles, clean_non_finite, find_cases, read_case
from petseg.io.geometry import CropBox, Geometry, isotropic_grid, resample
from petseg.io.images import read_image
from petseg.preprocessing import (
    CtOnPetGrid,
    PreparedCase,
    body_box,
    crop_to_grid,
    ct_on_pet_grid,
    locate_body,
    preprocess_case,
    scale_ct,
)

# ------------------------------------------------------------------ the previous way


def previous_read_case(files: CaseFiles, ct_fill_hu: float = -1024.0) -> Case:
    """`read_case` as it was: the PET, then the CT, the PET cast to float32 (a copy even
    when it is float32 already)."""
    pet_raw, ct_raw = read_image(files.pet), read_image(files.ct)
    pet = clean_non_finite(sitk.Cast(pet_raw, sitk.sitkFloat32), files.pet, 0.0)
    ct = clean_non_finite(ct_raw, files.ct, ct_fill_hu)
    check_units(pet, ct, files.pet, files.ct, pet_raw.GetPixelIDTypeAsString())
    check_overlap(pet, ct, files.pet, files.ct)
    return Case(files=files, pet=pet, ct=ct)


def previous_ct_on_pet_grid(pet: sitk.Image, ct: sitk.Image,
                            config: PreprocessingConfig) -> sitk.Image:
    """The CT (HU, float32) on the whole PET grid."""
    return ct_on_pet_grid(ct, Geometry.of(pet), config.ct_fill_hu)


def previous_body_box(pet: sitk.Image, ct_pet: sitk.Image,
                      config: PreprocessingConfig) -> CropBox:
    """Body mask on the whole PET grid (threshold, largest component, holes filled), its
    box plus the margin (`petseg.preprocessing.body_box`, unchanged)."""
    return body_box(sitk.GetArrayViewFromImage(ct_pet), Geometry.of(pet), config)


def previous_crop_to_grid(pet: sitk.Image, ct_pet: sitk.Image, box: CropBox,
                          config: PreprocessingConfig) -> PreparedCase:
    """The crop resampled to the isotropic grid as it was: the whole PET cast to float32
    before the crop, the arrays copied out of SimpleITK and stacked."""
    pet_geometry = Geometry.of(pet)
    crop_geometry = box.geometry(pet_geometry)
    grid = isotropic_grid(crop_geometry, config.target_spacing_mm, config.orientation)
    ct_hu = sitk.GetArrayViewFromImage(ct_pet)
    ct_scaled = crop_geometry.image_from_array(scale_ct(ct_hu[box.slices_zyx], config.ct_clip_hu))
    pet_cropped = sitk.RegionOfInterest(sitk.Cast(pet, sitk.sitkFloat32), box.size, box.index)
    fill_scaled = float(scale_ct(np.array([config.ct_fill_hu]), config.ct_clip_hu)[0])
    channels = {
        "pet": resample(pet_cropped, grid, sitk.sitkLinear, 0.0),
        "ct": resample(ct_scaled, grid, sitk.sitkLinear, fill_scaled),
    }
    image = np.stack(
        [sitk.GetArrayFromImage(channels[name]) for name in config.channel_order]
    ).astype(np.float32, copy=False)
    return PreparedCase(image=image, label=None, pet_geometry=pet_geometry, crop_box=box,
                        grid=grid)


def previous_body(pet: sitk.Image, ct: sitk.Image,
                  config: PreprocessingConfig) -> tuple[sitk.Image, CropBox]:
    """The CT on the whole PET grid, then the body box on the whole grid."""
    ct_pet = previous_ct_on_pet_grid(pet, ct, config)
    return ct_pet, previous_body_box(pet, ct_pet, config)


def previous_preprocess_case(pet: sitk.Image, ct: sitk.Image,
                             config: PreprocessingConfig) -> PreparedCase:
    """`preprocess_case` as it was: CT onto the whole PET grid, body box on the whole grid."""
    ct_pet, box = previous_body(pet, ct, config)
    return previous_crop_to_grid(pet, ct_pet, box, config)


def previous_probability_on_pet_grid(probability: np.ndarray, grid: Geometry, box: CropBox,
                                     pet_geometry: Geometry) -> np.ndarray:
    """`probability_on_pet_grid` as it was: a copy out of SimpleITK into a filled volume."""
    image = grid.image_from_array(np.ascontiguousarray(probability, dtype=np.float32))
    cropped = sitk.GetArrayFromImage(
        resample(image, box.geometry(pet_geometry), sitk.sitkLinear, 0.0))
    out = np.full(tuple(reversed(pet_geometry.size)), 0.0, dtype=np.float32)
    out[box.slices_zyx] = cropped
    return out


# ------------------------------------------------------------------ the run


def lesion_probability(case: PreparedCase, config: PreprocessingConfig) -> np.ndarray:
    """A stand-in for the network: float32 `[D, H, W]` logistic of the SUV around 2.5."""
    suv = case.image[config.channel_order.index("pet")]
    return (1.0 / (1.0 + np.exp(-4.0 * (suv - 2.5)))).astype(np.float32)


def stages(files: CaseFiles, config: PreprocessingConfig) -> list[tuple[str, Any, Any]]:
    """(stage, previous, current): zero-argument callables on one case read beforehand."""
    case = read_case(files)
    pet, ct, geometry = case.pet, case.ct, Geometry.of(case.pet)
    ct_pet = previous_ct_on_pet_grid(pet, ct, config)
    box, ct_hu = locate_body(CtOnPetGrid(ct, geometry, config.ct_fill_hu), config)
    prepared = crop_to_grid(pet, box, ct_hu, config)
    probability = lesion_probability(prepared, config)
    back = (probability, prepared.grid, box, geometry)
    return [
        ("read PET + CT", lambda: previous_read_case(files), lambda: read_case(files)),
        ("CT onto the PET grid + body mask and crop box",
         lambda: previous_body(pet, ct, config),
         lambda: locate_body(CtOnPetGrid(ct, geometry, config.ct_fill_hu), config)),
        ("crop to 2 mm", lambda: previous_crop_to_grid(pet, ct_pet, box, config),
         lambda: crop_to_grid(pet, box, ct_hu, config)),
        ("probability back to the PET grid", lambda: previous_probability_on_pet_grid(*back),
         lambda: probability_on_pet_grid(*back)),
    ]


def seconds(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def race(table: list[tuple[str, Any, Any]], repeat: int) -> list[list[object]]:
    """Each stage's two ways interleaved `repeat` times; rows of median seconds and ratio."""
    times = {name: ([], []) for name, _, _ in table}
    for index in range(repeat):
        for name, previous, current in table:
            order = ((0, previous), (1, current))
            for side, run in order if index % 2 == 0 else order[::-1]:
                times[name][side].append(seconds(run))
    rows, totals = [], np.zeros(2)
    for name, (before, after) in times.items():
        medians = np.array([np.median(before), np.median(after)])
        totals += medians
        rows.append([name, f"{medians[0]:.2f}", f"{medians[1]:.2f}",
                     f"{medians[0] / medians[1]:.2f}"])
    rows.append(["**all**", f"**{totals[0]:.2f}**", f"**{totals[1]:.2f}**",
                 f"**{totals[0] / totals[1]:.2f}**"])
    return rows


def ensemble_probability(weights: Path) -> tuple[Callable[[PreparedCase], np.ndarray],
                                                 PreprocessingConfig, float]:
    """(probability of a prepared case, preprocessing, threshold) of a trained ensemble
    (checkpoints + `manifest.json`) on the CPU, fast mode."""
    from petseg.config import InferenceConfig
    from petseg.inference.predictor import Predictor
    from petseg.preprocessing import body_mask_for_windows

    predictor = Predictor.from_weights_dir(weights, InferenceConfig(mode="fast"), device="cpu")
    config = predictor.model_config.preprocessing

    def probability(case: PreparedCase) -> np.ndarray:
        body = body_mask_for_windows(case.image, config)
        return predictor.probability(case.image, body_mask=body).probability.numpy()

    return probability, config, predictor.threshold


def agreement(files: CaseFiles, config: PreprocessingConfig,
              probability_of: Callable[[PreparedCase], np.ndarray] | None = None,
              threshold: float = 0.5) -> list[list[object]]:
    """The two paths from the files to the mask on the PET grid, compared; the probability
    from `probability_of` (default: `lesion_probability`)."""
    probability_of = probability_of or (lambda case: lesion_probability(case, config))
    before = previous_read_case(files)
    after = read_case(files)
    old = previous_preprocess_case(before.pet, before.ct, config)
    new = preprocess_case(after.pet, after.ct, config)
    masks = []
    for case, back in ((old, previous_probability_on_pet_grid),
                       (new, probability_on_pet_grid)):
        probability = back(probability_of(case), case.grid, case.crop_box, case.pet_geometry)
        masks.append(threshold_mask(probability, threshold))
    differ = np.abs(old.image - new.image)
    return [
        ["PET read: voxels differing", int(np.count_nonzero(
            sitk.GetArrayViewFromImage(before.pet) != sitk.GetArrayViewFromImage(after.pet)))],
        ["crop box equal", old.crop_box == new.crop_box],
        ["network input: largest difference", f"{differ.max():.2g}"],
        ["network input: voxels differing", int(np.count_nonzero(differ))],
        ["mask on the PET grid: lesion voxels (previous, current)",
         f"{int(masks[0].sum())}, {int(masks[1].sum())}"],
        ["mask on the PET grid: voxels differing", int(np.count_nonzero(masks[0] != masks[1]))],
        ["mask on the PET grid: Dice", f"{dice(masks[0], masks[1]):.6f}"],
    ]


def main() -> None:
    from common import print_table

    from petseg.phantom import generate_case, write_challenge_case

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--ct-grid", choices=["native", "pet"], default="native")
    parser.add_argument("--sitk-threads", type=int, default=None,
                        help="SimpleITK's global thread count (default: its own, the cores)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the case files go (default: a temporary folder)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="a trained ensemble (e.g. weights/) for the masks compared, "
                             "instead of the stand-in probability")
    args = parser.parse_args()
    if args.sitk_threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.sitk_threads)
    config, probability_of, threshold = PreprocessingConfig(), None, 0.5
    if args.weights:
        probability_of, config, threshold = ensemble_probability(args.weights)
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        folder = work / f"seed{args.seed}-{args.ct_grid}"
        if not folder.exists():
            case = generate_case(args.seed, "full", cohort="LYMPHOMA")
            write_challenge_case(case, folder, "case", ct_grid=args.ct_grid)
            del case
        files = find_cases(folder / "case").cases[0]
        pet, ct = (sitk.ReadImage(str(p)) for p in (files.pet, files.ct))
        print(f"# CPU stages: PET {pet.GetSize()}, CT {ct.GetSize()} at "
              f"{tuple(round(s, 4) for s in ct.GetSpacing())} mm ({args.ct_grid} grid); "
              f"SimpleITK threads {sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}; "
              f"medians of {args.repeat}, the two ways interleaved\n")
        del pet, ct
        print_table(["stage", "previous s", "current s", "previous / current"],
                    race(stages(files, config), args.repeat))
        print()
        print_table(["check (previous vs current)", "value"],
                    agreement(files, config, probability_of, threshold))


if __name__ == "__main__":
    main()
