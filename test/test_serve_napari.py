"""napari with the napari-nninteractive plugin against `petseg serve`, on a virtual screen
(Xvfb, Mesa's software OpenGL): the PET opened with napari-nifti, the plugin's widget in
Remote mode connects and initializes through its own buttons, a positive then a negative
point go through its point layer; the label layer it fills equals `petseg predict` with the
clicks the server recorded.

Needs Xvfb and the xcb libraries of Qt (`scripts/system_setup.sh`); skipped without Xvfb
unless PETSEG_REQUIRE_XVFB=1 (CI sets it)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
from serve_fixtures import KEY, config, dice, predicted, server, study, weights

from scripts.napari_screenshot import (
    LABELS,
    POINTS,
    connect_and_initialize,
    offline,
    start_xvfb,
)

__all__ = ["config", "server", "study", "weights"]  # fixtures used by name

XVFB = shutil.which("Xvfb")
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # npe2, napari on pydantic 2
    pytest.mark.slow,
    pytest.mark.skipif(XVFB is None and os.environ.get("PETSEG_REQUIRE_XVFB") != "1",
                       reason="Xvfb not installed (scripts/system_setup.sh installs it)"),
]
WAIT_MS = 120_000


@pytest.fixture(scope="session")
def screen(tmp_path_factory) -> Iterator[None]:
    """A virtual screen for Qt (xcb) and napari's and the plugin's settings in a temporary
    folder; session-scoped, so that it is set up before pytest-qt's `qapp`. Once Qt has
    connected, the server outlives the session: Qt exits the process when its display goes
    away, so Xvfb ends by itself when this process closes the connection."""
    assert XVFB is not None, \
        "PETSEG_REQUIRE_XVFB=1 but Xvfb is not on PATH; run scripts/system_setup.sh"
    process, display = start_xvfb()
    saved = {k: os.environ.get(k) for k in ("DISPLAY", "QT_QPA_PLATFORM", "XDG_CONFIG_HOME")}
    os.environ.update(DISPLAY=display, QT_QPA_PLATFORM="xcb",
                      XDG_CONFIG_HOME=str(tmp_path_factory.mktemp("xdg")))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        from qtpy.QtWidgets import QApplication

        if QApplication.instance() is None:
            process.terminate()
            process.wait(30)


@pytest.fixture()
def viewer(screen, qapp, monkeypatch):
    """A napari viewer, its window not shown; the plugin's PyPI version check answers
    offline (no request leaves the machine)."""
    import napari
    from napari_nninteractive import _version_check

    monkeypatch.setattr(_version_check, "_latest_version", offline)
    shown = napari.Viewer(show=False)
    try:
        yield shown
    finally:
        shown.close()


def test_the_napari_plugin_fills_the_mask_of_predict(tmp_path, viewer, qtbot, server, study,
                                                     weights, config) -> None:
    _cases, pet, _ct = study
    path = tmp_path / "pet.nii.gz"
    sitk.WriteImage(pet, str(path))
    [image] = viewer.open(path, plugin="napari-nifti")
    # napari-nifti holds the volume as SAR+: the phantom's x already runs right to left
    # (direction -1), so only y is reversed
    zyx = sitk.GetArrayFromImage(pet)
    np.testing.assert_array_equal(image.data, zyx[:, ::-1, :])
    np.testing.assert_allclose(np.abs(image.scale), [6.0, 4.0, 4.0])  # signed by the reader

    widget = connect_and_initialize(
        viewer, server, KEY, lambda condition: qtbot.waitUntil(condition, timeout=WAIT_MS))
    assert widget.remote_status_label.text() == f"connected ({server})"
    assert widget.image_selection.currentText() == image.name
    labels = viewer.layers[LABELS]
    assert labels.data.shape == (24, 30, 30) and not labels.data.any()
    points = viewer.layers[POINTS]
    assert widget.prompt_button.index == 0  # positive

    def click(index: tuple[int, int, int]) -> None:
        """What napari's add-point mouse binding does: the click's data coordinates."""
        points.add(np.asarray(index, float))

    # positive on the hot spot at PET (x, y, z) = (6, 21, 5): SAR+ index (5, 8, 6)
    click((5, 29 - 21, 6))
    assert labels.data[5, 8, 6] == 1
    after_positive = labels.data.copy()
    masked = np.argwhere(after_positive)
    far = masked[np.argmax(np.abs(masked - [5, 8, 6]).sum(axis=1))]
    widget.prompt_button.buttons[1].click()  # negative
    assert widget.prompt_button.index == 1
    click(tuple(far))
    assert labels.data[tuple(far)] == 0 and labels.data.sum() < after_positive.sum()

    headers = {"Authorization": f"Bearer {KEY}", "X-Lease-Token": widget.session._lease_token}
    clicks = httpx.get(server + "/petseg/clicks", headers=headers).json()["points"]
    background = [int(far[2]), int(29 - far[1]), int(far[0])]
    assert clicks == [{"point": [6, 21, 5], "name": "tumor"},
                      {"point": background, "name": "background"}]
    mask = labels.data[:, ::-1, :]  # back to the PET's [z, y, x]
    both = predicted(tmp_path / "both", study, weights, config, clicks)
    # the session replaces the probability within UPDATE_MM of a click, measured for the
    # bundled network; this scaled random network's clicks reach a little past it
    assert dice(mask, both) >= 0.999 and int((mask != both).sum()) <= 2
    first = predicted(tmp_path / "first", study, weights, config, clicks[:1])
    assert dice(after_positive[:, ::-1, :], first) >= 0.999
    print(f"label layer: {int(after_positive.sum())} voxels after the positive point, "
          f"{int(mask.sum())} after the negative; Dice with predict {dice(mask, both):.4f}")

    widget.init_button.click()  # Initialized: tears the session down, releases the lease
    gone = httpx.get(server + "/lease_status", headers=headers)
    assert gone.status_code == 410
