"""Sessions kept across calls: autoPET V calls an algorithm once per scribble on the same
case, and the platform keeps a `/cache` folder between those calls.

`SessionCache(folder, fingerprint)` keeps one `SessionState` per case under
`<folder>/petseg-sessions/<key>.npz`, the key the sha256 of the PET and CT files' bytes and
the run's fingerprint (weights and settings, `petseg.runs.resume.run_fingerprint`), so
another case, other images under the same name, other weights or settings never find
it. A folder that is absent is not used; one that cannot be read or written, or a kept
file that is damaged or does not fit the case, is passed over with a warning: the case
is then computed from the start, which gives the same mask.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.checkpoint import file_sha256, sha256_of
from petseg.inference.predictor import Prediction
from petseg.interactive.clicks import Clicks
from petseg.interactive.session import InteractiveSession, SessionState
from petseg.progress import CaseProgress

log = logging.getLogger(__name__)

SESSIONS_FOLDER = "petseg-sessions"
KEPT_SESSIONS = 4
"""Sessions kept at most (the oldest go first): one case's calls need one."""
STATE_VERSION = 1


class SessionCache:
    """Session states by case, in `folder` (see the module docstring).

    Args:
        folder: the cache folder (e.g. the platform's `/cache`).
        fingerprint: the run's weights and settings, as `run_fingerprint` gives them.
    """

    def __init__(self, folder: str | Path, fingerprint: Mapping[str, str]) -> None:
        self.folder = Path(folder) / SESSIONS_FOLDER
        self.root = Path(folder)
        self.fingerprint = json.dumps(dict(fingerprint), sort_keys=True)

    @property
    def usable(self) -> bool:
        """Whether the cache folder exists."""
        return self.root.is_dir()

    def key(self, pet: Path, ct: Path) -> str:
        """The case's key: sha256 of its images' bytes and the run's fingerprint."""
        return sha256_of(f"{file_sha256(pet)} {file_sha256(ct)} {self.fingerprint}".encode())

    def load(self, key: str) -> SessionState | None:
        """The state kept for `key`, or None (none kept, or unreadable: warned)."""
        path = self.folder / f"{key}.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as kept:
                if int(kept["version"]) != STATE_VERSION:
                    raise ValueError(f"version {int(kept['version'])}")
                clicks = json.loads(str(kept["clicks"]))
                return SessionState(
                    probability=np.asarray(kept["probability"], np.float32),
                    clicks=Clicks(tumour=tuple(map(tuple, clicks["tumour"])),
                                  background=tuple(map(tuple, clicks["background"]))),
                    pad=tuple(tuple(int(v) for v in p) for p in kept["pad"]),
                    padded_shape=tuple(int(v) for v in kept["padded_shape"]),
                    passes=int(kept["passes"]))
        except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            log.warning("%s: kept session unusable (%s); the case is computed from the start",
                        path, exc)
            return None

    def save(self, key: str, state: SessionState) -> None:
        """Keep `state` for `key` (atomically); a folder that cannot be written is warned
        about and left as it is."""
        try:
            self.folder.mkdir(exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".npz.tmp")
            with os.fdopen(handle, "wb") as file:
                np.savez_compressed(
                    file, version=STATE_VERSION, probability=state.probability,
                    clicks=json.dumps({"tumour": [list(p) for p in state.clicks.tumour],
                                       "background": [list(p) for p in state.clicks.background]}),
                    pad=np.asarray(state.pad), padded_shape=np.asarray(state.padded_shape),
                    passes=state.passes)
            os.replace(temporary, self.folder / f"{key}.npz")
            self._keep_newest()
        except OSError as exc:
            log.warning("%s: cannot keep the session (%s); each call computes the case from "
                        "the start", self.folder, exc)

    def _keep_newest(self) -> None:
        kept = sorted(self.folder.glob("*.npz"), key=lambda p: p.stat().st_mtime_ns,
                      reverse=True)
        for old in kept[KEPT_SESSIONS:]:
            old.unlink(missing_ok=True)


def cached_prediction(session: InteractiveSession, cache: SessionCache, files: tuple[Path, Path],
                      pet: sitk.Image, ct: sitk.Image, clicks: Clicks, probability: bool = False,
                      progress: CaseProgress | None = None) -> Prediction:
    """The case's answer to `clicks` through `session`, going on from the state `cache`
    kept for the same images, weights and settings (then the network runs only where the
    clicks changed), and keeping the new state for the next call.

    Args:
        files: the PET and CT files `pet` and `ct` were read from (the key).
        probability: also return the network's probability on the PET grid.
    """
    key = cache.key(*files)
    state = cache.load(key)
    resumed = False
    if state is not None:
        try:
            session.resume(pet, ct, state, progress)
            resumed = True
        except ValueError as exc:
            log.warning("%s: kept session does not fit the case (%s); computed from the start",
                        cache.folder / f"{key}.npz", exc)
    if resumed:
        log.info("session kept from an earlier call: the network runs only where the clicks "
                 "changed")
        mask = session.update(clicks, progress)
    else:
        mask = session.start(pet, ct, clicks, progress)
    cache.save(key, session.state())
    return Prediction(mask=mask,
                      probability=session.probability_on_pet_grid() if probability else None)
