"""Plausibility by principle: each rule with an input just inside and just outside its
threshold, the issue's implausible inputs refused by `read_case`, and implausible results."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from image_fixtures import body_ct, body_suv, write_volume

from petseg.errors import PetsegError
from petseg.io import plausibility as rules
from petseg.io.cases import CaseFiles, read_case
from petseg.io.geometry import LAS_DIRECTION, Geometry

PET = Path("pet.mha")
CT = Path("ct.mha")


def blank(extent_mm: tuple[float, float, float], voxels: int = 8) -> sitk.Image:
    """An image of `voxels` voxels per axis spanning `extent_mm` (x, y, slices)."""
    image = sitk.Image([voxels] * 3, sitk.sitkFloat32)
    image.SetSpacing([e / voxels for e in extent_mm])
    return image


def _extent_outcome(extent: tuple[float, float, float], caplog, smallest: bool = True) -> str:
    """"refused", "warned" or "ok" for an image of `extent` mm."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="petseg.io.plausibility"):
        try:
            rules.check_extent(blank(extent), PET, "PET", smallest)
        except PetsegError:
            return "refused"
    return "warned" if caplog.records else "ok"


WHOLE_BODY = (815.0, 815.0, 978.0)  # autoPET's 400 x 400 x 326 PET


@pytest.mark.parametrize(("inside", "inside_outcome", "outside", "outside_outcome"), [
    # an axis too thin: refused below 16 mm (16 mm itself is still a small image: warned)
    ((16.0, 815.0, 978.0), "warned", (15.9, 815.0, 978.0), "refused"),
    ((815.0, 16.0, 978.0), "warned", (815.0, 15.9, 978.0), "refused"),
    ((815.0, 815.0, 16.0), "warned", (815.0, 815.0, 15.9), "refused"),
    # longer or wider than any body: refused above 2500 / 1200 mm
    ((815.0, 815.0, 2500.0), "ok", (815.0, 815.0, 2500.1), "refused"),
    ((1200.0, 815.0, 978.0), "ok", (1200.1, 815.0, 978.0), "refused"),
    ((815.0, 1200.0, 978.0), "ok", (815.0, 1200.1, 978.0), "refused"),
    # shorter than a bed position, narrower than a field of view: warned
    ((815.0, 815.0, 150.0), "ok", (815.0, 815.0, 149.9), "warned"),
    ((250.0, 815.0, 978.0), "ok", (249.9, 815.0, 978.0), "warned"),
    ((815.0, 250.0, 978.0), "ok", (815.0, 249.9, 978.0), "warned"),
])
def test_extent_rules_just_inside_and_just_outside(caplog, inside, inside_outcome, outside,
                                                   outside_outcome) -> None:
    assert _extent_outcome(inside, caplog) == inside_outcome
    assert _extent_outcome(outside, caplog) == outside_outcome


def test_a_ct_is_only_checked_for_units_of_length(caplog) -> None:
    """The CT's smallness is measured against the PET (`check_overlap`), not alone."""
    assert _extent_outcome((815.0, 815.0, 15.9), caplog, smallest=False) == "ok"
    assert _extent_outcome((815.0, 815.0, 2500.1), caplog, smallest=False) == "refused"


def _values_outcome(pet: tuple[float, float], ct: tuple[float, float], caplog) -> str:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="petseg.io.plausibility"):
        try:
            rules.check_value_ranges(pet, ct, PET, CT)
        except PetsegError as exc:
            return "refused " + str(exc).split(":")[0]
    return "warned" if caplog.records else "ok"


TYPICAL_PET, TYPICAL_CT = (0.0, 8.0), (-1000.0, 1200.0)


@pytest.mark.parametrize(("inside", "outside", "outcome"), [
    # PET dynamic range: 99.9th - 1st percentile at least 0.5 SUV
    (((4.0, 4.5), TYPICAL_CT), ((4.0, 4.49), TYPICAL_CT), "refused pet.mha"),
    # PET value range: the 99.9th percentile reaches 2 SUV, else warned
    (((0.0, 2.0), TYPICAL_CT), ((0.0, 1.99), TYPICAL_CT), "warned"),
    # CT dynamic range: at least 100 HU
    ((TYPICAL_PET, (0.0, 100.0)), (TYPICAL_PET, (0.0, 99.9)), "refused ct.mha"),
    # CT value range: -3100 to 4000 HU
    ((TYPICAL_PET, (-3100.0, 1200.0)), (TYPICAL_PET, (-3100.1, 1200.0)), "refused ct.mha"),
    ((TYPICAL_PET, (-1000.0, 4000.0)), (TYPICAL_PET, (-1000.0, 4000.1)), "refused ct.mha"),
])
def test_value_rules_just_inside_and_just_outside(caplog, inside, outside, outcome) -> None:
    assert _values_outcome(*inside, caplog) == "ok"
    assert _values_outcome(*outside, caplog) == outcome


def _read(tmp_path: Path, pet: np.ndarray, ct: np.ndarray, geometry: Geometry) -> None:
    files = CaseFiles("c", write_volume(tmp_path / "images/pet/p.mha", pet, geometry),
                      write_volume(tmp_path / "images/ct/c.mha", ct, geometry))
    read_case(files)


def test_read_case_refuses_the_implausible_inputs(tmp_path) -> None:
    """The kinds of input that were segmented anyway: two slices, no contrast, a CT far
    outside Hounsfield units. One line each, naming the file."""
    thin = Geometry((10, 9, 2), (2.0364, 2.0364, 3.0), (-10.0, 20.0, -300.0), LAS_DIRECTION)
    with pytest.raises(PetsegError, match=r"images/pet/p\.mha: PET of 20 x 18 x 6 mm \(x, y, "
                                          r"slices\) is thinner than 16 mm along an axis"):
        _read(tmp_path / "thin", body_suv()[:2], body_ct()[:2], thin)
    normal = Geometry((10, 9, 8), (2.0364, 2.0364, 3.0), (-10.0, 20.0, -300.0), LAS_DIRECTION)
    with pytest.raises(PetsegError, match=r"images/pet/p\.mha: no contrast \(1st to 99\.9th "
                                          r"percentile 3 to 3 SUV"):
        _read(tmp_path / "flat", np.full((8, 9, 10), 3.0, np.float32), body_ct(), normal)
    with pytest.raises(PetsegError, match=r"images/ct/c\.mha: values -1e\+04 to 7000 \(1st to "
                                          r"99\.9th percentile\) lie outside any Hounsfield"):
        _read(tmp_path / "scaled", body_suv(), body_ct().astype(np.float32) * 10, normal)


def _mask_and_pet(lesion_voxels: int, body_voxels: int, spacing: float
                  ) -> tuple[sitk.Image, sitk.Image]:
    """A 1-D strip of images: the first `body_voxels` at 1 SUV, the first `lesion_voxels`
    lesion."""
    n = max(lesion_voxels, body_voxels) + 1
    pet = np.zeros((1, 1, n), np.float32)
    pet[..., :body_voxels] = 1.0
    mask = np.zeros((1, 1, n), np.uint8)
    mask[..., :lesion_voxels] = 1
    images = [sitk.GetImageFromArray(a) for a in (mask, pet)]
    for image in images:
        image.SetSpacing([spacing] * 3)
    return images[0], images[1]


def test_an_implausible_lesion_volume_is_flagged() -> None:
    # 10 mm voxels: 1 ml each; the body large enough that only the volume rule applies
    assert rules.implausible_result(*_mask_and_pet(10_000, 30_000, 10.0)) is None
    flag = rules.implausible_result(*_mask_and_pet(10_001, 30_000, 10.0))
    assert flag == ("10001.0 ml of lesion is more than any reported tumour burden "
                    "(10000 ml); check the weights (an untrained fold?)")


def test_a_lesion_covering_most_of_the_body_is_flagged() -> None:
    assert rules.implausible_result(*_mask_and_pet(500, 1000, 10.0)) is None
    flag = rules.implausible_result(*_mask_and_pet(501, 1000, 10.0))
    assert flag == ("501.0 ml of lesion is 50% of the body (1000.0 ml at or above 0.2 SUV), "
                    "more than 50%; check the weights and the PET's SUV")
