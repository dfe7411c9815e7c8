"""The model tarball for grand-challenge's Models page: what it holds, unpacked it is a
weights folder `petseg predict` loads, reproducible, and never packed from a corrupt fold."""

from __future__ import annotations

import hashlib
import subprocess
import tarfile
from pathlib import Path

import pytest
from random_weights import make_random_weights

from petseg.checkpoint import find_weights_dir, load_ensemble
from petseg.errors import PetsegError
from petseg.training.model_tarball import main, pack_model_tarball, unpacked_names

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_random_weights(tmp_path_factory.mktemp("w") / "weights", folds=2)


def test_the_tarball_unpacks_into_a_weights_folder(tmp_path, weights) -> None:
    digest = pack_model_tarball(weights, tmp_path / "model.tar.gz")
    assert digest == hashlib.sha256((tmp_path / "model.tar.gz").read_bytes()).hexdigest()
    assert (tmp_path / "model.tar.gz.sha256").read_text() == f"{digest}  model.tar.gz\n"
    assert unpacked_names(tmp_path / "model.tar.gz") == [
        "manifest.json", "fold_0.safetensors", "fold_1.safetensors"]
    model = tmp_path / "opt/ml/model"  # as the platform unpacks it
    with tarfile.open(tmp_path / "model.tar.gz") as tar:
        tar.extractall(model, filter="data")
    assert find_weights_dir([model]) == model
    folds = load_ensemble(model)  # each fold's sha256 checked against the manifest
    assert [c.meta["fold"] for c in folds] == ["fold_0", "fold_1"]
    # reproducible: the same folder packs to the same bytes
    assert pack_model_tarball(weights, tmp_path / "again.tar.gz") == digest


def test_the_tarball_bytes_depend_on_no_clock_file_time_or_mode(tmp_path, weights,
                                                                monkeypatch) -> None:
    """Packed at two different (fake) times from files of different mtimes and modes: the
    same bytes; the gzip header's MTIME is 0, no file name; every member root's, 0644,
    mtime 0."""
    import os
    import shutil
    import time

    copy = tmp_path / "weights"
    shutil.copytree(weights, copy)
    digests = []
    for clock, mode in ((1_000_000_000.0, 0o600), (1_700_000_000.5, 0o755)):
        for path in copy.iterdir():
            path.chmod(mode)
            os.utime(path, (clock, clock))
        monkeypatch.setattr(time, "time", lambda clock=clock: clock)  # what gzip stamps
        digests.append(pack_model_tarball(copy, tmp_path / f"{int(clock)}.tar.gz"))
    monkeypatch.undo()
    assert digests[0] == digests[1]
    raw = (tmp_path / "1000000000.tar.gz").read_bytes()
    # RFC 1952: ID1 ID2, CM 8 (deflate), FLG 0 (no FNAME), MTIME 0 (4 bytes little-endian)
    assert raw[:8] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00"
    with tarfile.open(tmp_path / "1000000000.tar.gz") as tar:
        members = [(m.name, m.type, m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode,
                    m.pax_headers) for m in tar.getmembers()]
    assert members == [(name, tarfile.REGTYPE, 0, 0, 0, "root", "root", 0o644, {})
                       for name in ("manifest.json", "fold_0.safetensors", "fold_1.safetensors")]


def test_a_corrupt_fold_is_never_packed(tmp_path, weights, capsys) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in weights.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    with open(broken / "fold_1.safetensors", "r+b") as fold:
        fold.seek(-1, 2)
        fold.write(b"\x00" if fold.read(1) != b"\x00" else b"\x01")
    with pytest.raises(PetsegError, match=r"broken/fold_1\.safetensors: sha256 [0-9a-f]{16}\.\.\. "
                                          r"does not match manifest\.json"):
        pack_model_tarball(broken, tmp_path / "model.tar.gz")
    (broken / "fold_0.safetensors").unlink()
    assert main([str(broken), str(tmp_path / "model.tar.gz")]) == 1
    assert capsys.readouterr().err == (
        f"model_tarball: error: {broken / 'fold_0.safetensors'}: fold_0 listed in manifest.json "
        "is missing; copy it back or export the weights again\n")
    assert not (tmp_path / "model.tar.gz").exists()


def test_export_sh_writes_the_model_tarball_without_docker(tmp_path, weights) -> None:
    out = tmp_path / "model.tar.gz"
    result = subprocess.run(
        [str(REPOSITORY / "export.sh"), "--model-only", "--weights", str(weights),
         "--model-output", str(out)], capture_output=True, text=True, check=False,
        env={"PATH": "/usr/bin:/bin", "PETSEG_PYTHON": str(REPOSITORY / ".venv/bin/python"),
             "PYTHONPATH": str(REPOSITORY)})
    assert result.returncode == 0, result.stderr
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert result.stdout.split() == [digest]
    assert unpacked_names(out) == ["manifest.json", "fold_0.safetensors", "fold_1.safetensors"]
