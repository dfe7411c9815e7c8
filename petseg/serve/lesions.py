"""One reader's study on the server: the automatic mask, their clicks, the mask their viewer holds.

nnInteractive segments one object per target buffer; here the buffer is the study's lesion
mask, every lesion ("lesions", one segment):

- after `set_image` the ensemble runs once over the study, in the background;
- a positive point or scribble is tumour clicks, a negative one background clicks
  (`petseg.interactive.clicks.Clicks`, PET voxel indices x, y, z); the mask is
  `InteractiveSession.update` with all clicks so far: a missed lesion is added, a false
  positive removed (the click rule), and click-aware weights rerun the network only around
  the changed click maps;
- the answer is the part of the mask that differs from what the viewer holds: the server
  keeps a copy of the viewer's buffer (zeros after `set_target_buffer` and after a reset,
  as the client zeroes its own), so the first interaction sends every lesion and each later
  one the box its change touched;
- undo drops the last interaction's clicks, reset drops all; the mask follows from the
  remaining clicks: the network's output from before the last interaction is kept, so an
  undo runs no network (a second undo in a row, or a reset, reruns it only around the
  clicks that went).

A scribble becomes tumour or background clicks at its voxels, one per `SCRIBBLE_STEP_MM`
cell, so a stroke costs a few clicks, not thousands.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import threading
import time

import numpy as np
import SimpleITK as sitk

from petseg.errors import PetsegError
from petseg.inference.predictor import Predictor
from petseg.interactive.clicks import Clicks
from petseg.interactive.session import InteractiveSession, Patch
from petseg.serve.studies import MatchedStudy

log = logging.getLogger(__name__)

ANSWER_STAGES = "answer stages (s):"
"""Starts the log line giving each answer's time per stage (a JSON object after it)."""
SCRIBBLE_STEP_MM = 4.0
"""A scribble keeps one of its voxels per cube of this edge (mm) as a click."""

Index = tuple[int, int, int]
Box = list[list[int]]


@dataclasses.dataclass(frozen=True)
class Kept:
    """How to bring back the interactive session's network state for `clicks`, those
    before an interaction: what the interaction's update overwrote (boxes, not copies of
    the whole case)."""

    clicks: Clicks
    patches: list[Patch]


@dataclasses.dataclass(frozen=True)
class Step:
    """The clicks one interaction added (PET voxel indices x, y, z)."""

    tumour: tuple[Index, ...] = ()
    background: tuple[Index, ...] = ()


def changed_bounds(before: np.ndarray, after: np.ndarray) -> Box | None:
    """`[[low, high]] * 3` (high exclusive) of the voxels where two 3D arrays differ; the
    first axis is found on flat rows, the other two only within its range."""
    changed = before != after
    rows = np.flatnonzero(changed.reshape(changed.shape[0], -1).any(axis=1))
    if not len(rows):
        return None
    slab = changed[rows[0]:rows[-1] + 1]
    box = [[int(rows[0]), int(rows[-1]) + 1]]
    for axes in ((0, 2), (0, 1)):
        hit = np.flatnonzero(slab.any(axis=axes))
        box.append([int(hit[0]), int(hit[-1]) + 1])
    return box


def changed_part(viewer: np.ndarray, mask: np.ndarray) -> tuple[Box, np.ndarray] | None:
    """(box, uint8 copy of `mask` inside the box) where `mask` differs from the viewer's
    copy `viewer` (updated in place), None where they agree. The part is a copy that owns
    its memory: `mask` may view an image freed before the part is sent (a view here
    crashed the server)."""
    box = changed_bounds(viewer, mask)
    if box is None:
        return None
    index = tuple(slice(low, high) for low, high in box)
    part = np.array(mask[index], dtype=np.uint8, order="C", copy=True)
    viewer[index] = part
    return box, part


def scribble_voxels(mask: np.ndarray, offset: list[int], spacing: np.ndarray) -> np.ndarray:
    """`[N, 3]` upload indices of a scribble crop `mask` placed at `offset`: one voxel (the
    first in index order) per `SCRIBBLE_STEP_MM` cube of the upload's grid."""
    voxels = np.argwhere(mask != 0) + np.asarray(offset)
    if not len(voxels):
        return voxels
    cells = np.floor(voxels * spacing / SCRIBBLE_STEP_MM).astype(np.int64)
    _, first = np.unique(cells, axis=0, return_index=True)
    return voxels[np.sort(first)]


class LesionSession:
    """The study of one lease: the background ensemble run, clicks, the viewer's mask copy.

    Args:
        predictor: the server's ensemble (shared, read-only).
        study: the matched study.
        spacing: the upload's spacing on its axes (mm).
        compute: held while the network runs (one run at a time on the server).
    """

    def __init__(self, predictor: Predictor, study: MatchedStudy, spacing: np.ndarray,
                 compute: threading.Lock) -> None:
        self.study = study
        self.spacing = spacing
        self.session = InteractiveSession(predictor)
        self.steps: list[Step] = []
        self.viewer: np.ndarray | None = None  # the viewer's buffer as the server sent it
        self.kept: Kept | None = None
        self.compute = compute
        executor = concurrent.futures.ThreadPoolExecutor(1, "petseg-serve-start")
        self.started = executor.submit(self._start)
        executor.shutdown(wait=False)

    def _start(self) -> None:
        with self.compute:
            self.session.start(self.study.pet, self.study.ct, None)
        log.info("study %s: automatic mask ready", self.study.name)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.study.upload_shape

    def status(self) -> str:
        """"running", "ready" or "failed: <why>" for the first ensemble run."""
        if not self.started.done():
            return "running"
        error = self.started.exception()
        return "ready" if error is None else f"failed: {error}"

    def set_viewer_buffer(self) -> None:
        """The viewer made a fresh (zero) buffer of the image's shape."""
        self.viewer = np.zeros(self.shape, np.uint8)

    def add_points(self, points: np.ndarray, positive: bool) -> None:
        """Upload indices `[N, 3]` as one interaction of tumour (positive) or background
        clicks."""
        pet = tuple(self.study.orientation.pet_index(tuple(p), self.shape) for p in points)
        self.steps.append(Step(tumour=pet) if positive else Step(background=pet))

    def add_box(self, low: list[int], high: list[int], positive: bool) -> tuple[int, int, int]:
        """A box (upload indices, `high` exclusive) as one click at its hottest PET voxel:
        tumour (positive: the lesion inside the box, grown by the click rule from its
        SUVmax) or background (negative: the component at the box's hottest voxel goes).
        Returns that voxel's PET index (x, y, z)."""
        corners = [self.study.orientation.pet_index(tuple(c), self.shape)
                   for c in (low, [h - 1 for h in high])]
        lo_xyz = np.minimum(*corners)
        hi_xyz = np.maximum(*corners) + 1
        suv = sitk.GetArrayViewFromImage(self.study.pet)[
            lo_xyz[2]:hi_xyz[2], lo_xyz[1]:hi_xyz[1], lo_xyz[0]:hi_xyz[0]]
        z, y, x = np.unravel_index(int(np.argmax(suv)), suv.shape)
        hottest = (int(lo_xyz[0] + x), int(lo_xyz[1] + y), int(lo_xyz[2] + z))
        self.steps.append(Step(tumour=(hottest,)) if positive else Step(background=(hottest,)))
        return hottest

    def clicks(self) -> Clicks:
        """Every click of the steps so far, in order."""
        return Clicks(tumour=tuple(i for s in self.steps for i in s.tumour),
                      background=tuple(i for s in self.steps for i in s.background))

    def undo(self) -> bool:
        """Drop the last interaction; False when there is none."""
        if not self.steps:
            return False
        self.steps.pop()
        return True

    def reset(self) -> None:
        """Drop every interaction; the viewer zeroed its buffer."""
        self.steps.clear()
        if self.viewer is not None:
            self.viewer[...] = 0

    def _update(self, clicks: Clicks) -> sitk.Image:
        """The session's mask for `clicks`. The state kept for exactly these clicks comes
        back (an undo: no network); an update that changes the network's state is kept
        for a later undo (what it overwrote)."""
        session = self.session
        kept = self.kept
        if kept is not None and kept.clicks == clicks and session.clicks != clicks:
            session.restore(kept.patches, kept.clicks)
        before = session.clicks or Clicks()
        mask = session.update(clicks)
        if session.patches:
            self.kept = Kept(before, session.patches)
        return mask

    def answer(self) -> tuple[Box, np.ndarray] | None:
        """(box, uint8 mask inside the box) of what the viewer must change to hold the mask
        for the clicks so far, None when it already does; the viewer's copy is updated."""
        if self.viewer is None:
            raise RuntimeError("set_target_buffer first")
        try:
            self.started.result()  # the first ensemble run
        except Exception as exc:
            raise PetsegError(f"the automatic run on study {self.study.name} failed: "
                              f"{exc}") from exc
        clicks = self.clicks()
        with self.compute:
            mask = self._update(clicks)
        began = time.perf_counter()
        found = changed_part(
            self.viewer, self.study.orientation.to_upload(sitk.GetArrayViewFromImage(mask)))
        stages = {**self.session.seconds, "viewer's change": time.perf_counter() - began}
        log.info("%s %s", ANSWER_STAGES, json.dumps({k: round(v, 4) for k, v in stages.items()}))
        return found
