"""Reading images with their header checks, atomic writes, JSON files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from image_fixtures import GEOMETRY, body_ct, body_suv, touch, write_volume

from petseg.errors import PetsegError
from petseg.io.geometry import Geometry
from petseg.io.images import read_image, read_images, write_image, write_json


def _edit_header(path: Path, old: bytes, new: bytes) -> Path:
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))
    return path


def _mha(path: Path, compress: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = GEOMETRY.image_from_array(body_suv())
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


@pytest.mark.parametrize(("old", "new", "message"), [
    (b"ElementSpacing = 2.0364 2.0364 3", b"ElementSpacing = 2.0364 -2.0364 3",
     r"voxel spacing 2\.0364 -2\.0364 3 in the header is not positive \(a flip belongs in the "
     r"direction matrix\)"),
    (b"ElementSpacing = 2.0364 2.0364 3", b"ElementSpacing = 0 2.0364 3",
     r"voxel spacing \[0, 2\.0364, 3\] in the header is not positive"),
    (b"ElementSpacing = 2.0364 2.0364 3", b"ElementSpacing = 2.0364 2.0364 300",
     r"voxel spacing 2\.0364 x 2\.0364 x 300 mm is outside 0\.1-20 mm"),
    (b"TransformMatrix = -1 0 0 0 1 0 0 0 1", b"TransformMatrix = -1 0 0 -1 0 0 0 0 1",
     r"the direction matrix in the header is singular"),
    (b"TransformMatrix = -1 0 0 0 1 0 0 0 1", b"TransformMatrix = -2 0 0 0 1 0 0 0 1",
     r"direction matrix \[\[-2\.0, 0\.0, 0\.0\], .* is not orthonormal \(off by 3\)"),
])
def test_headers_no_scanner_writes_are_refused(tmp_path, old, new, message) -> None:
    path = _edit_header(_mha(tmp_path / "p.mha"), old, new)
    with pytest.raises(PetsegError, match=r"p\.mha: " + message):
        read_image(path)


def test_negative_nifti_pixdim_is_refused(tmp_path) -> None:
    import gzip
    import struct

    path = tmp_path / "p.nii.gz"
    sitk.WriteImage(GEOMETRY.image_from_array(body_suv()), str(path))
    header = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<f", header, 80, -2.0364)  # pixdim[1]
    path.write_bytes(gzip.compress(bytes(header)))
    with pytest.raises(PetsegError, match=r"p\.nii\.gz: voxel spacing -2\.0364 2\.0364 3 in the "
                                          r"header is not positive"):
        read_image(path)


def test_truncated_empty_and_corrupt_files_say_so(tmp_path) -> None:
    flat = tmp_path / "flat.mha"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkFloat32), str(flat))
    with pytest.raises(PetsegError, match=r"flat\.mha: is 2D, a 3D volume is needed"):
        read_image(flat)
    raw = _mha(tmp_path / "raw.mha")
    raw.write_bytes(raw.read_bytes()[:-1000])
    with pytest.raises(PetsegError, match=r"raw\.mha: is truncated: 1,880 of 2,880 bytes of voxel "
                                          r"data; copy the file again$"):
        read_image(raw)
    packed = _mha(tmp_path / "packed.mha", compress=True)
    packed.write_bytes(packed.read_bytes()[:-100])
    size = packed.stat().st_size
    with pytest.raises(PetsegError, match=rf"packed\.mha: is truncated or corrupt: the header "
                                          rf"describes 720 voxels \(10 x 9 x 8\), the file holds "
                                          rf"{size:,} bytes; copy the file again$"):
        read_image(packed)
    nifti = tmp_path / "p.nii.gz"
    sitk.WriteImage(GEOMETRY.image_from_array(body_suv()), str(nifti))
    nifti.write_bytes(nifti.read_bytes()[:-200])
    with pytest.raises(PetsegError, match=r"p\.nii\.gz: is truncated or corrupt"):
        read_image(nifti)
    with pytest.raises(PetsegError, match=r"empty\.mha: is empty \(0 bytes\); copy the file"):
        read_image(touch(tmp_path / "empty.mha"))
    junk = tmp_path / "junk.nrrd"
    junk.write_bytes(b"not an image at all" * 10)
    with pytest.raises(PetsegError, match=r"junk\.nrrd: is not an image SimpleITK can read, or its "
                                          r"header is corrupt \(190 bytes\); replace the file"):
        read_image(junk)


def test_read_images_reads_each_file_as_read_image_and_names_the_first_bad_one(
        tmp_path) -> None:
    pet = _mha(tmp_path / "pet.mha", compress=True)
    ct = write_volume(tmp_path / "ct.mha", body_ct())
    together = read_images(pet, ct)
    for path, image in zip((pet, ct), together, strict=True):
        alone = read_image(path)
        assert Geometry.of(image) == Geometry.of(alone)
        assert image.GetPixelID() == alone.GetPixelID()
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image),
                                      sitk.GetArrayViewFromImage(alone))
    empty = touch(tmp_path / "empty.mha")
    with pytest.raises(PetsegError, match=f"^{empty}: is empty"):
        read_images(pet, empty)
    with pytest.raises(PetsegError, match=f"^{tmp_path / 'gone.mha'}: file not found"):
        read_images(tmp_path / "gone.mha", empty)


def test_atomic_writes_leave_no_partial_file(tmp_path) -> None:
    with pytest.raises(TypeError):
        write_json({"x": object()}, tmp_path / "out/results.json")
    assert list((tmp_path / "out").iterdir()) == []
    write_json([{"name": "a"}], tmp_path / "out/results.json")
    assert json.loads((tmp_path / "out/results.json").read_text()) == [{"name": "a"}]
    path = write_image(GEOMETRY.reference_image(), tmp_path / "out/m.mha")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.mha", "results.json"]
    assert Geometry.of(read_image(path)) == GEOMETRY


def test_atomic_writes_give_files_the_plain_open_mode(tmp_path) -> None:
    """Results are readable by other users (umask 022 gives 0644), even where the writer
    replaces the temporary file with a 0600 one, as safetensors does."""
    import os
    import stat

    import torch

    from petseg.checkpoint import save_checkpoint
    from petseg.config import ModelConfig

    old_umask = os.umask(0o022)
    try:
        image = write_image(GEOMETRY.reference_image(), tmp_path / "m.mha")
        report = write_json({"a": 1}, tmp_path / "r.json")
        weights = save_checkpoint(tmp_path / "fold_0.safetensors", {"w": torch.zeros(2)},
                                  ModelConfig(), {"mean_dsc": 0.5})
    finally:
        os.umask(old_umask)
    for path in (image, report, weights):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="Linux /proc only")
def test_the_umask_is_read_without_changing_it(tmp_path, monkeypatch) -> None:
    """Setting the umask to read it would race with threads creating files meanwhile."""
    import stat

    from petseg.io.images import process_umask

    old_umask = os.umask(0o027)
    try:
        def refuse(mask):
            raise AssertionError("os.umask called")

        monkeypatch.setattr(os, "umask", refuse)
        assert process_umask() == 0o027
        path = write_json({"a": 1}, tmp_path / "r.json")
    finally:
        monkeypatch.undo()
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_write_json_refuses_nan_in_strict_mode_and_leaves_no_file(tmp_path) -> None:
    target = tmp_path / "out" / "summary.json"
    data = {"folds": {"fold_0": {"metrics": {"mean_dsc": float("nan")}}}, "n": [1, 2]}
    with pytest.raises(ValueError, match=r"summary\.json: folds\.fold_0\.metrics\.mean_dsc is "
                                         r"NaN or infinite, which strict JSON cannot hold"):
        write_json(data, target)
    with pytest.raises(ValueError, match=r"values\[1\] is NaN or infinite"):
        write_json({"values": [0.5, float("-inf")]}, target)
    assert list((tmp_path / "out").iterdir()) == []
    write_json(data, target, strict=False)
    assert json.loads(target.read_text()) == {"folds": {"fold_0": {"metrics": {"mean_dsc": None}}},
                                             "n": [1, 2]}


def test_write_json_maps_numpy_paths_and_tuples_only_on_purpose(tmp_path) -> None:
    data = {"spacing": (np.float32(2.5), np.int64(3)), "file": tmp_path / "a.mha"}
    with pytest.raises(TypeError):
        write_json(data, tmp_path / "strict.json")
    path = write_json(data, tmp_path / "loose.json", strict=False, indent=1)
    assert json.loads(path.read_text()) == {"spacing": [2.5, 3], "file": str(tmp_path / "a.mha")}
    assert path.read_text().startswith('{\n "spacing": [\n  2.5,')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loose.json"]


def test_write_json_keeps_the_old_file_when_writing_fails(tmp_path) -> None:
    target = write_json({"version": 1}, tmp_path / "manifest.json")
    with pytest.raises(ValueError):
        write_json({"version": float("nan")}, target)
    with pytest.raises(TypeError):
        write_json({"version": object()}, target)
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_read_json_names_the_file_and_the_fix(tmp_path) -> None:
    from petseg.io.images import read_json

    fix = "recreate it with `petseg split`"
    missing = tmp_path / "splits.json"
    with pytest.raises(PetsegError) as raised:
        read_json(missing, "split file", fix)
    assert str(raised.value) == f"{missing}: split file not found; {fix}"
    missing.write_text('{"folds": 5,')
    with pytest.raises(PetsegError) as raised:
        read_json(missing, "split file", fix)
    message = str(raised.value)
    assert message.startswith(f"{missing}: split file not valid JSON (Expecting ")
    assert message.endswith(f"); {fix}") and "\n" not in message
    missing.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(PetsegError, match=r"splits\.json: not valid JSON \(.*utf-8"):
        read_json(missing, "", fix)
    with pytest.raises(PetsegError, match=r": cannot be read \(Is a directory\); restore it"):
        read_json(tmp_path, "", "restore it")
    missing.write_text('{"folds": 5, "seed": [1, 2.5]}')
    assert read_json(missing, "split file", fix) == {"folds": 5, "seed": [1, 2.5]}


def test_a_permission_error_gets_the_fix_for_what_was_being_done() -> None:
    import errno

    from petseg.errors import describe_os_error

    denied = PermissionError(errno.EACCES, "Permission denied", "/out/fold_0.safetensors")
    uid = os.getuid()
    assert describe_os_error(denied, reading=True) == (
        f"/out/fold_0.safetensors: permission denied for uid {uid}; make it readable "
        "(chmod a+r, or a+rX for a folder) or run as its owner")
    assert describe_os_error(denied) == (  # a write, or not known: both ways in
        f"/out/fold_0.safetensors: permission denied for uid {uid}; give this user access "
        "(chmod a+r to read, u+w to write, a+rX for a folder) or run as its owner")
