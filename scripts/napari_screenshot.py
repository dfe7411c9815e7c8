"""Screenshot of napari with the napari-nninteractive plugin connected to `petseg serve`
(docs/images/serve-napari.png): a small autoPET-layout phantom, the bundled weights on the
CPU, the PET opened with napari-nifti, one positive point on a lesion through the plugin.

Usage: .venv/bin/python scripts/napari_screenshot.py OUT.png [--seed N]
Needs Xvfb (scripts/system_setup.sh). The helpers that start Xvfb and drive the plugin's
widget are shared with test/test_serve_napari.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POINTS = "nnInteractive - Point Layer"
LABELS = "nnInteractive - Label Layer"


def offline(package: str) -> str:
    """Stands in for the plugin's PyPI version look-up: no request leaves the machine."""
    raise OSError(f"no PyPI version check for {package}")


def start_xvfb(size: str = "1280x1024x24") -> tuple[subprocess.Popen, str]:
    """An Xvfb server on a free display number that ends when its last client disconnects
    (`-terminate`); (process, DISPLAY)."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise RuntimeError("Xvfb is not on PATH; run scripts/system_setup.sh")
    read, write = os.pipe()
    process = subprocess.Popen([xvfb, "-displayfd", str(write), "-screen", "0", size,
                                "-nolisten", "tcp", "-terminate"], pass_fds=(write,))
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()
    if not number:
        raise RuntimeError("Xvfb did not report a display number")
    return process, f":{number}"


def connect_and_initialize(viewer, url: str, key: str | None, wait) -> object:
    """Dock the plugin's widget by its manifest name (as napari's Plugins menu does), enter
    the server URL and key, press Connect, then Initialize on the selected image layer.
    `wait(condition)` runs the Qt event loop until `condition()` holds. Returns the widget."""
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-nninteractive")
    if not widget._remote_mode:
        raise RuntimeError("the plugin is not in Remote mode (a local backend is installed?)")
    widget.server_url_edit.setText(url)
    widget.api_key_edit.setText(key or "")
    widget.connect_btn.click()
    wait(lambda: widget._remote_connected
         or widget.remote_status_label.text() not in ("connecting…", "not connected"))
    if not widget._remote_connected:
        raise RuntimeError(f"connect failed: {widget.remote_status_label.text()}")
    widget.init_button.click()  # uploads the volume on a worker thread
    # done: the point tool's layer is made; failed: the plugin unlocks the session again
    wait(lambda: POINTS in viewer.layers or not widget._session_locked)
    if POINTS not in viewer.layers:
        raise RuntimeError("the upload failed (see the plugin's warning)")
    return widget


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(cases: Path) -> tuple[subprocess.Popen, str]:
    """`petseg serve` on loopback with the bundled weights on the CPU; (process, URL)."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "petseg", "serve", "--cases", str(cases),
                                "--port", str(port), "--device", "cpu"])
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return process, url
        if process.poll() is not None:
            raise RuntimeError("petseg serve exited")
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("petseg serve did not answer within 300 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--seed", type=int, default=5, help="phantom seed (default 5)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="napari-shot-"))
    subprocess.run([sys.executable, "-m", "petseg", "phantom", str(work / "cases"), "--cases",
                    "1", "--seed", str(args.seed), "--layout", "autopet", "--size", "small",
                    "--negative-fraction", "0"], check=True)
    [pet] = (work / "cases").rglob("SUV.nii.gz")
    xvfb, display = start_xvfb("1600x1000x24")
    os.environ.update(DISPLAY=display, QT_QPA_PLATFORM="xcb", XDG_CONFIG_HOME=str(work))
    server, url = _serve(work / "cases")
    try:
        return _shoot(pet, url, args.out)
    finally:
        server.kill()
        server.wait(30)
        shutil.rmtree(work, ignore_errors=True)
        del xvfb  # ends with this process's display connection (-terminate)


def _shoot(pet: Path, url: str, out: Path) -> int:
    """Open `pet`, click the brightest lesion voxel's slice through the plugin, save `out`."""
    import napari
    import numpy as np
    from medvol import MedVol
    from napari.utils.colormaps import DirectLabelColormap
    from napari_nninteractive import _version_check
    from qtpy.QtWidgets import QApplication

    _version_check._latest_version = offline

    def wait(condition, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError("timed out waiting for the plugin")
            QApplication.processEvents()
            time.sleep(0.05)

    from napari.settings import get_settings

    get_settings().application.gui_notification_level = "error"  # no toasts on the picture
    viewer = napari.Viewer(title="napari: petseg serve")
    viewer.window.resize(1600, 1000)
    [image] = viewer.open(pet, plugin="napari-nifti")
    image.contrast_limits = (0.0, 6.0)
    image.colormap = "gray_r"  # as PET is read: dark uptake on white
    truth = MedVol(str(pet.with_name("SEG.nii.gz"))).get_array("SAR+")  # napari-nifti's axes
    widget = connect_and_initialize(viewer, url, None, wait)
    # the automatic run first: on a loaded CPU it outlasts the client's 60 s read timeout
    import httpx

    lease = {"X-Lease-Token": widget.session._lease_token}
    start = time.monotonic()
    wait(lambda: httpx.get(url + "/lease_status", headers=lease).json().get("automatic_run")
         == "ready")
    print(f"automatic run ready {time.monotonic() - start:.1f} s after the upload")
    lesion = np.argwhere(truth > 0)
    hottest = lesion[np.argmax(image.data[tuple(lesion.T)])]
    # coronal: superior-inferior up, right-left across, the slider on anterior-posterior
    viewer.dims.order = (1, 0, 2)
    viewer.dims.set_point(1, float(image.data_to_world(hottest)[1]))
    start = time.monotonic()
    viewer.layers[POINTS].add(hottest.astype(float))  # answered before add returns
    print(f"click answered in {time.monotonic() - start:.1f} s")
    labels = viewer.layers[LABELS]
    labels.opacity = 0.7  # the plugin's dark red at 0.3 is lost in the PET's grey
    labels.colormap = DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0),
                                                      1: (1.0, 0.3, 0.0, 1.0)})
    print(f"click at SAR+ voxel {hottest.tolist()}: {int(labels.data.sum())} lesion voxels, "
          f"{int(labels.data[:, hottest[1]].sum())} on the slice")
    viewer.reset_view()
    centre = image.data_to_world(hottest)
    viewer.scene.camera.center = (float(centre[0]), float(centre[2]))
    viewer.scene.camera.zoom *= 1.6
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    from PIL import Image

    pixels = viewer.screenshot(canvas_only=False, flash=False)
    Image.fromarray(pixels).convert("RGB").quantize(128).save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} kB)")
    widget._release_session()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
