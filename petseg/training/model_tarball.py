"""A weights folder as grand-challenge's model tarball (`model.tar.gz`).

The algorithm's Models page takes a tarball that the platform unpacks into /opt/ml/model
at run time, so the image and the weights can be uploaded apart. The tarball holds
`manifest.json` and the fold files it lists, at its root; each fold's sha256 is checked
against the manifest before packing, so a corrupt or replaced file never gets uploaded.
The archive is reproducible: sorted members, mtime 0, owner root, mode 0644.

    python -m petseg.training.model_tarball WEIGHTS_DIR OUT.tar.gz

prints the tarball's sha256 and writes `OUT.tar.gz.sha256` beside it (`sha256sum -c`).
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tarfile
from pathlib import Path

from petseg.checkpoint import MANIFEST_NAME, file_sha256, read_manifest
from petseg.errors import PetsegError
from petseg.io.images import atomic_path


def model_files(weights_dir: str | Path) -> list[Path]:
    """The manifest and the fold files it lists, each fold checked against its sha256.

    Raises:
        PetsegError: a listed fold is missing or its sha256 differs from the manifest's.
    """
    weights_dir = Path(weights_dir)
    manifest = read_manifest(weights_dir)
    files = [weights_dir / MANIFEST_NAME]
    for name, entry in sorted(manifest.get("folds", {}).items()):
        path = weights_dir / str(entry.get("file", ""))
        if not path.is_file():
            raise PetsegError(f"{path}: {name} listed in {MANIFEST_NAME} is missing; copy it "
                              "back or export the weights again")
        actual = file_sha256(path)
        if actual != str(entry.get("sha256", "")).lower():
            raise PetsegError(f"{path}: sha256 {actual[:16]}... does not match {MANIFEST_NAME}; "
                              "the file is corrupt or replaced, export the weights again")
        files.append(path)
    if len(files) == 1:
        raise PetsegError(f"{weights_dir / MANIFEST_NAME}: lists no fold; export the weights "
                          "with `petseg export-weights`")
    return files


def _member(path: Path) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path.name)
    info.size, info.mtime, info.mode = path.stat().st_size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def pack_model_tarball(weights_dir: str | Path, output: str | Path) -> str:
    """Write `output` (gzipped tar of `model_files`) and `output.sha256`, both atomically;
    returns the tarball's sha256."""
    output = Path(output)
    files = model_files(weights_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    with (atomic_path(output) as tmp, open(tmp, "wb") as raw,
          gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as packed,
          tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as tar):
        for path in files:
            with open(path, "rb") as data:
                tar.addfile(_member(path), data)
    digest = file_sha256(output)
    with atomic_path(output.with_name(output.name + ".sha256")) as tmp:
        tmp.write_text(f"{digest}  {output.name}\n")
    return digest


def unpacked_names(tarball: str | Path) -> list[str]:
    """The member names of a model tarball (what lands in /opt/ml/model)."""
    with tarfile.open(tarball, "r:gz") as tar:
        return tar.getnames()


def main(argv: list[str] | None = None) -> int:
    """`python -m petseg.training.model_tarball WEIGHTS_DIR OUT`: pack and print the sha256."""
    parser = argparse.ArgumentParser(prog="python -m petseg.training.model_tarball",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", type=Path, help="folder with manifest.json and the folds")
    parser.add_argument("output", type=Path, help="tarball to write, e.g. out/model.tar.gz")
    args = parser.parse_args(argv)
    try:
        print(pack_model_tarball(args.weights, args.output))
    except PetsegError as exc:
        print(f"model_tarball: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
